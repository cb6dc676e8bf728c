"""Operator-signed admin endpoints that drive a node's fault layer.

    POST /admin/fault    {"fault": {...}, "nonce": hex, "timestamp_ms": int}   -> 201 {"id", ...}
    POST /admin/clear    {"id": int (optional), "nonce": hex, "timestamp_ms": int}
    GET  /admin/faults?nonce=hex&timestamp_ms=int                              -> layer status

What is signed and how a client signs it is :mod:`node.faults.signing`; here the node checks
the signature, the timestamp's freshness and the nonce (a bounded cache of recently seen nonces
stops replays of the same request), then applies, clears or lists faults.

Answers: 400 malformed request or fault, 401 no usable credentials (missing or malformed
signature, nonce or timestamp), 403 credentials refused (bad signature, stale timestamp,
replayed nonce, no operator key configured), 404 fault injection disabled in the node config,
409 fault cannot be applied now, 429 nonce cache full. Every error is JSON
``{"error": ..., "detail": ...}``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from node.crypto import verify
from node.faults.layer import FaultLayer
from node.faults.model import FaultConflict, FaultError, parse_fault
from node.faults.signing import (
    ACTION_CLEAR,
    ACTION_FAULT,
    ACTION_LIST,
    ACTION_PARAMS,
    ENVELOPE_KEYS,
    MAX_SKEW_MS,
    NONCE_MAX_BYTES,
    NONCE_MIN_BYTES,
    SIGNATURE_BYTES,
    SIGNATURE_HEADER,
    WallClockMs,
    admin_signing_bytes,
    wall_ms,
)
from node.http import (
    BadRequest,
    json_error,
    parse_hex_range,
    parse_json,
    parse_uint,
    read_body_limited,
)

log = logging.getLogger("medchain.admin")

NONCE_CACHE_MAX: Final = 10_000
MAX_ADMIN_BODY_BYTES: Final = 64 * 1024
ADMIN_BODY_TIMEOUT_S: Final = 10.0


class NonceCache:
    """Nonces seen within the replay window, oldest first; bounded.

    A nonce is remembered for twice the allowed skew after it arrives: its timestamp can be
    at most MAX_SKEW_MS in the future, and after that it is stale anyway.

    With ``path`` the cache survives restarts: each accepted nonce is appended (``hex
    expires_ms``) and fsynced before the request is carried out, and the file is read back
    (unexpired lines only; anything malformed is skipped) and compacted when the cache starts.
    A request replayed across a restart is refused like any other replay."""

    __slots__ = ("_loaded", "_max", "_path", "_seen", "_ttl_ms")

    def __init__(
        self,
        max_entries: int = NONCE_CACHE_MAX,
        ttl_ms: int = 2 * MAX_SKEW_MS,
        *,
        path: Path | None = None,
    ) -> None:
        self._max = max_entries
        self._ttl_ms = ttl_ms
        self._seen: OrderedDict[bytes, int] = OrderedDict()
        self._path = path
        self._loaded = path is None

    def _load(self, now_ms: int) -> None:
        """Read the file once (lazily: the data directory may not exist when routes are made)."""
        self._loaded = True
        assert self._path is not None
        try:
            text = self._path.read_text("ascii", errors="replace")
        except FileNotFoundError:
            text = ""
        for line in text.splitlines()[-2 * self._max :]:
            parts = line.split(" ")
            if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit():
                continue
            try:
                nonce = bytes.fromhex(parts[0])
            except ValueError:
                continue
            expires = int(parts[1][:19])
            if expires > now_ms and len(self._seen) < self._max:
                self._seen[nonce] = expires
        self._rewrite()

    def _rewrite(self) -> None:
        assert self._path is not None
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._path.with_name(f".{self._path.name}.tmp")
        lines = "".join(f"{n.hex()} {e}\n" for n, e in self._seen.items())
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, lines.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)

    def _append(self, nonce: bytes, expires: int) -> None:
        assert self._path is not None
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{nonce.hex()} {expires}\n".encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, nonce: bytes, now_ms: int) -> str | None:
        """Remember ``nonce``; None if fresh, else "replayed" or "full"."""
        if not self._loaded:
            self._load(now_ms)
        while self._seen:
            oldest, expires = next(iter(self._seen.items()))
            if expires > now_ms:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return "replayed"
        if len(self._seen) >= self._max:
            return "full"  # refusing is safe; forgetting a live nonce would allow a replay
        expires = now_ms + self._ttl_ms
        if self._path is not None:
            self._append(nonce, expires)  # durable before the request is carried out
        self._seen[nonce] = expires
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
        wall_clock_ms: WallClockMs = wall_ms,
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
            if len(request.query) != len(set(request.query)):
                raise AdminError(400, "malformed request", "a query parameter is repeated")
            fields: dict[str, Any] = dict(request.query)
            if "timestamp_ms" in fields:
                fields["timestamp_ms"] = _query_int(fields["timestamp_ms"])
        else:
            if request.content_type != "application/json":
                raise AdminError(415, "unsupported content type", "use application/json")
            try:
                body = await read_body_limited(
                    request, MAX_ADMIN_BODY_BYTES, timeout_s=ADMIN_BODY_TIMEOUT_S
                )
                doc = parse_json(body, max_bytes=MAX_ADMIN_BODY_BYTES)
            except BadRequest as e:
                raise AdminError(e.status, e.error, e.detail) from None
            if not isinstance(doc, dict):
                raise AdminError(400, "malformed request", "body must be a JSON object")
            fields = doc
        allowed = ENVELOPE_KEYS | ACTION_PARAMS[action]
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
            signature = parse_hex_range(sig_hex, SIGNATURE_BYTES, SIGNATURE_BYTES, "signature")
        except ValueError as e:
            raise AdminError(401, "malformed signature", str(e)) from None
        if self.operator_public_key is None:
            raise AdminError(403, "no operator key", "this node's config has no [operator] key")
        params = {k: v for k, v in fields.items() if k not in ENVELOPE_KEYS}
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
    try:
        return parse_hex_range(value, NONCE_MIN_BYTES, NONCE_MAX_BYTES, "nonce")
    except ValueError as e:
        raise AdminError(401, "missing credentials", str(e)) from None


def _query_int(text: str) -> int | str:
    """An integer query value (ASCII digits, int64), or the text unchanged (then refused as a
    bad timestamp)."""
    try:
        return parse_uint(text, "timestamp_ms")
    except BadRequest:
        return text


def admin_routes(
    fault_layer: FaultLayer | None,
    operator_public_key: bytes | None,
    *,
    wall_clock_ms: WallClockMs = wall_ms,
    nonce_file: Path | None = None,
) -> list[web.RouteDef]:
    """The admin routes for ``app.add_routes``. Always register them: with faults disabled
    they answer 404 with a JSON body saying how to enable them. ``nonce_file``: where used
    nonces persist across restarts (None: in memory only)."""
    api = AdminApi(
        fault_layer,
        operator_public_key,
        wall_clock_ms=wall_clock_ms,
        nonces=NonceCache(path=nonce_file),
    )
    return [
        web.post("/admin/fault", api.post_fault),
        web.post("/admin/clear", api.post_clear),
        web.get("/admin/faults", api.get_faults),
    ]


__all__ = ["MAX_ADMIN_BODY_BYTES", "AdminApi", "NonceCache", "admin_routes"]
