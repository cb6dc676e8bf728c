"""The client HTTP API of a node (aiohttp.web), plus the peer endpoint from ``node.transport``.

Endpoints (every error is JSON ``{"error": "...", "detail": ...}``):

``POST /tx``
    Submit one transaction or a batch. Content types:

    ``application/json``: one transaction object, or ``{"txs": [object, ...]}``. A transaction
    object has exactly these fields (bytes as lowercase or uppercase hex, the payload base64)::

        {
          "record_id":    str,         # 1..128 printable characters
          "patient":      str,         # pseudonymous patient id, 1..128 characters
          "hospital":     str,         # must be the hospital the client key is registered for
          "record_type":  str,         # 1..64 characters
          "timestamp_ms": int,         # client clock, >= 0
          "nonce":        hex,         # 16 bytes
          "client_key":   hex,         # 32-byte Ed25519 public key of the hospital client
          "signature":    hex,         # 64-byte Ed25519 signature of the header
          "payload":      base64,      # the record's payload (standard alphabet, padded)
          "payload_hash": hex,         # optional: sha256(payload); checked if present
          "tx_id":        hex          # optional: checked against the computed id if present
        }

    ``application/msgpack``: either one encoded transaction (``node.ledger.encode_tx``) or a
    msgpack array of encoded transactions, each as msgpack bin (see :func:`msgpack_tx_body`).

    Every transaction is decoded and fully checked (``node.ledger`` check_tx: fields, payload
    hash, registered client key, signature) before admission. Answers:
      202 ``{"accepted": [tx_id hex, ...], "rejected": [{"index": i, "error": "..."}, ...]}``
          when at least one transaction was admitted (already committed ones count as accepted:
          submitting is idempotent);
      400 malformed body or every transaction malformed; 422 every transaction well-formed but
          invalid (bad signature, unknown client key, ...); both carry accepted/rejected too;
      413 body over ``max_body_bytes`` or more than ``max_batch_request_txs`` transactions;
      415 other content types; 503 (with Retry-After) when the mempool or the node's inbox is
      full.

``GET /tx/{id}[?wait_ms=N]``
    ``{"tx_id", "status": "pending"}`` if this node knows the transaction but it is not yet on
    chain, ``{"tx_id", "status": "committed", "height"}`` once committed, 404 if unknown. With
    ``wait_ms`` (capped at ``tx_wait_max_ms``) the request waits until the transaction commits
    or the time is up, then answers as above (a long poll).

``GET /status``   node id, view, primary, height, head hash, stable checkpoint, mempool size,
                  peer links with their state, counters.
``GET /blocks/{height}[?payload=1][&txs=1|ids|0]``   one block (``block_to_json``); 404 if none.
``GET /blocks?from=H&limit=L[&payload=1][&txs=1|ids|0]``   up to L consecutive blocks from
                  height H: ``{"blocks": [...], "height": head, "next": H'|null}``.
                  ``txs`` chooses the form of each block:
                  ``1`` (default): header, transactions (``payload=1``: with payloads) and
                  certificate, at most ``blocks_page_max`` (100) per page;
                  ``ids``: header, ``tx_ids`` (hex, in block order) and certificate;
                  ``0``: header and certificate only (``ledger.header_to_json``).
                  The light forms skip decoding the transactions (what peers' audits and the
                  bench's observer read every second), at most ``HEADERS_PAGE_MAX`` per page.
``GET /health``   200 ``{"ok": true}`` while the consensus task runs, else 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from node import codec
from node.access import read_access
from node.codec import CodecError
from node.faults.wiring import install_api_faults
from node.http import (
    INT64_MAX,
    BadRequest,
    harden_app,
    json_error,
    parse_hex,
    parse_json,
    parse_uint,
    query_uint,
    read_body_limited,
)
from node.ledger import (
    HASH_SIZE,
    KEY_SIZE,
    NONCE_SIZE,
    SIGNATURE_SIZE,
    BlockHeader,
    LedgerError,
    Transaction,
    TxEnvelope,
    block_to_json,
    encode_tx,
    header_to_json,
    payload_hash,
)
from node.ops import install_ops
from node.store import StoreError
from node.verified import BlockUnavailable

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger("medchain.api")

JSON: Final = "application/json"
MSGPACK: Final = "application/msgpack"
RETRY_AFTER_S: Final = "1"
ADMIT_CHUNK: Final = 64
"""Transactions verified between two yields to the event loop (keeps the node responsive)."""
_TX_ID_HEX_LEN: Final = 64
_DEFAULT_BLOCKS_LIMIT: Final = 20
HEADERS_PAGE_MAX: Final = 1000
"""Largest ``limit`` of GET /blocks in the light forms (``txs=ids`` or ``txs=0``)."""
TXS_FULL: Final = "full"
TXS_IDS: Final = "ids"
TXS_NONE: Final = "none"
_TXS_VALUES: Final = {
    "1": TXS_FULL,
    "full": TXS_FULL,
    "true": TXS_FULL,
    "yes": TXS_FULL,
    "ids": TXS_IDS,
    "0": TXS_NONE,
    "none": TXS_NONE,
    "false": TXS_NONE,
    "no": TXS_NONE,
}

_TX_FIELDS: Final = frozenset(
    {
        "record_id",
        "patient",
        "hospital",
        "record_type",
        "timestamp_ms",
        "nonce",
        "client_key",
        "signature",
        "payload",
        "payload_hash",
        "tx_id",
    }
)
_OPTIONAL_TX_FIELDS: Final = frozenset({"payload_hash", "tx_id"})


class Overloaded(Exception):
    """The node cannot take more work right now (inbox or mempool full): answer 503."""


ApiError = BadRequest
"""An error answer with an HTTP status; rendered by the middleware as JSON (``node.http``)."""


# ---------------------------------------------------------------------------------------------
# client-side helpers (the CLI and bench build request bodies with these)


def tx_to_request_json(env: TxEnvelope) -> dict[str, Any]:
    """The JSON object POST /tx accepts for ``env``."""
    tx = env.tx
    return {
        "record_id": tx.record_id,
        "patient": tx.patient,
        "hospital": tx.hospital,
        "record_type": tx.record_type,
        "timestamp_ms": tx.timestamp_ms,
        "nonce": tx.nonce.hex(),
        "client_key": tx.client_key.hex(),
        "signature": tx.signature.hex(),
        "payload": base64.b64encode(env.payload).decode("ascii"),
        "payload_hash": tx.payload_hash.hex(),
    }


def msgpack_tx_body(envs: Iterable[TxEnvelope]) -> bytes:
    """An ``application/msgpack`` POST /tx body carrying ``envs`` as one batch."""
    return codec.pack([encode_tx(env) for env in envs])


# ---------------------------------------------------------------------------------------------
# request parsing


@dataclass(frozen=True, slots=True)
class Rejection:
    index: int
    error: str
    malformed: bool
    """True for a structural problem (400 class), False for an invalid transaction (422)."""

    def to_json(self) -> dict[str, object]:
        return {"index": self.index, "error": self.error}


def _decode_json_body(body: bytes, max_depth: int) -> list[object]:
    doc = parse_json(body, max_bytes=len(body), max_depth=max_depth)
    if isinstance(doc, dict) and "txs" in doc:
        if len(doc) != 1:
            raise ApiError(400, "malformed request", 'a batch object has only the key "txs"')
        txs = doc["txs"]
        if not isinstance(txs, list):
            raise ApiError(400, "malformed request", '"txs" must be an array')
        return txs
    if isinstance(doc, dict):
        return [doc]
    raise ApiError(400, "malformed request", 'expected a transaction object or {"txs": [...]}')


def _decode_msgpack_body(body: bytes) -> list[object]:
    """One encoded tx (an array whose first item is the format int) or an array of bins."""
    try:
        value = codec.unpack(body, max_bytes=len(body) or 1, what="body")
    except CodecError as e:
        raise ApiError(400, "malformed msgpack", e.reason) from None
    if type(value) is not tuple or not value:
        raise ApiError(400, "malformed request", "expected an encoded tx or an array of them")
    if type(value[0]) is int:
        return [body]
    return list(value)


def _hex_field(obj: dict[str, Any], name: str, size: int) -> bytes:
    return parse_hex(obj[name], size, name)


def _json_tx(obj: object) -> tuple[TxEnvelope, bytes, bytes | None]:
    """(envelope, its encoding, claimed tx id) from one JSON object; ValueError naming the bad
    field. The envelope is handed to admission as it is: it is not decoded back from the
    bytes."""
    if not isinstance(obj, dict):
        raise ValueError("transaction must be a JSON object")
    unknown = sorted(set(obj) - _TX_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r}")
    missing = sorted(_TX_FIELDS - _OPTIONAL_TX_FIELDS - set(obj))
    if missing:
        raise ValueError(f"missing field {missing[0]!r}")
    for name in ("record_id", "patient", "hospital", "record_type"):
        if not isinstance(obj[name], str):
            raise ValueError(f"{name} must be a string")
    ts = obj["timestamp_ms"]
    if type(ts) is not int or not 0 <= ts <= codec.MAX_UINT:
        raise ValueError("timestamp_ms must be a non-negative 64-bit integer")
    payload_b64 = obj["payload"]
    if not isinstance(payload_b64, str):
        raise ValueError("payload must be a base64 string")
    try:
        payload = base64.b64decode(payload_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("payload is not valid base64") from None
    p_hash = (
        _hex_field(obj, "payload_hash", HASH_SIZE)
        if "payload_hash" in obj
        else payload_hash(payload)
    )
    claimed = _hex_field(obj, "tx_id", HASH_SIZE) if "tx_id" in obj else None
    tx = Transaction(
        record_id=obj["record_id"],
        patient=obj["patient"],
        hospital=obj["hospital"],
        record_type=obj["record_type"],
        payload_hash=p_hash,
        timestamp_ms=ts,
        nonce=_hex_field(obj, "nonce", NONCE_SIZE),
        client_key=_hex_field(obj, "client_key", KEY_SIZE),
        signature=_hex_field(obj, "signature", SIGNATURE_SIZE),
    )
    env = TxEnvelope(tx=tx, payload=payload)
    try:
        raw = encode_tx(env)
    except CodecError as e:
        raise ValueError(e.reason) from None
    return env, raw, claimed


def _parse_tx_id(text: str) -> bytes:
    try:
        return parse_hex(text, _TX_ID_HEX_LEN // 2, "transaction id")
    except ValueError as e:
        raise ApiError(400, "bad transaction id", str(e)) from None


def _int_param(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    try:
        return query_uint(request, name, default, lo=lo, hi=hi)
    except BadRequest as e:
        raise ApiError(400, "bad query parameter", e.detail) from None


def _bool_param(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "0").lower()
    if raw in ("1", "true", "yes"):
        return True
    if raw in ("0", "false", "no", ""):
        return False
    raise ApiError(400, "bad query parameter", f"{name} must be 0/1 or true/false")


def _txs_param(request: web.Request) -> str:
    """The block form asked for (``txs``): TXS_FULL, TXS_IDS or TXS_NONE."""
    raw = request.query.get("txs", "1").lower()
    form = _TXS_VALUES.get(raw)
    if form is None:
        raise ApiError(400, "bad query parameter", "txs must be 1 (full), ids or 0 (none)")
    if form != TXS_FULL and _bool_param(request, "payload"):
        raise ApiError(400, "bad query parameter", "payload=1 needs the transactions (txs=1)")
    return form


# ---------------------------------------------------------------------------------------------
# handlers


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as JSON; no exception from a handler reaches (or stops) the server."""
    try:
        return await handler(request)
    except BadRequest as e:
        return e.response()
    except Overloaded as e:
        resp = json_error(503, "overloaded", str(e))
        resp.headers["Retry-After"] = RETRY_AFTER_S
        return resp
    except web.HTTPException as e:
        if e.status < 400:
            raise
        resp = json_error(
            e.status, e.reason, e.text if e.text != f"{e.status}: {e.reason}" else None
        )
        for name in ("Allow", "Retry-After"):
            if name in e.headers:
                resp.headers[name] = e.headers[name]
        return resp
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json_error(500, "internal error", type(e).__name__)


class Api:
    """Request handlers bound to one node."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.limits = node.config.limits

    async def post_tx(self, request: web.Request) -> web.Response:
        ctype = request.content_type
        if ctype not in (JSON, MSGPACK):
            raise ApiError(415, "unsupported content type", f"use {JSON} or {MSGPACK}")
        body = await read_body_limited(
            request, self.limits.max_body_bytes, timeout_s=self.limits.body_timeout_ms / 1000.0
        )
        if ctype == JSON:
            items = _decode_json_body(body, self.limits.json_max_depth)
        else:
            items = _decode_msgpack_body(body)
        if not items:
            raise ApiError(400, "malformed request", "no transactions in request")
        if len(items) > self.limits.max_batch_request_txs:
            raise ApiError(
                413,
                "too many transactions",
                f"{len(items)} in one request, limit {self.limits.max_batch_request_txs}",
            )
        # Admission control first: a node past its backlog bound answers 503 before it spends
        # a signature check on transactions it would refuse anyway.
        self.node.check_admission(len(items))
        indexes, ids, raws, rejected = await self._admit(items, from_json=ctype == JSON)
        accepted: list[bytes] = []
        refused: dict[bytes, str] = {}
        if ids:
            refused = await self.node.submit(ids, raws)
            for index, tx_id in zip(indexes, ids, strict=True):
                if tx_id in refused:
                    rejected.append(Rejection(index, refused[tx_id], malformed=False))
                else:
                    accepted.append(tx_id)
        rejected.sort(key=lambda r: r.index)
        result = {
            "accepted": [tx_id.hex() for tx_id in accepted],
            "rejected": [r.to_json() for r in rejected],
        }
        if accepted:
            return web.json_response(result, status=202)
        first = rejected[0]
        error = {"detail": f"transaction {first.index}: {first.error}", **result}
        if refused:
            # Valid transactions were turned away for lack of room: the client should retry.
            resp = web.json_response({"error": "overloaded", **error}, status=503)
            resp.headers["Retry-After"] = RETRY_AFTER_S
            return resp
        status = 400 if all(r.malformed for r in rejected) else 422
        return web.json_response({"error": "no transaction accepted", **error}, status=status)

    async def _admit(
        self, items: list[object], *, from_json: bool
    ) -> tuple[list[int], list[bytes], list[bytes], list[Rejection]]:
        """Decode and check every item; yields to the loop between chunks of signatures.

        Returns the request indexes, ids and encodings of admissible transactions, and the
        rejections."""
        ledger_app = self.node.ledger_app
        indexes: list[int] = []
        ids: list[bytes] = []
        raws: list[bytes] = []
        rejected: list[Rejection] = []
        seen: set[bytes] = set()
        for i, item in enumerate(items):
            if i and i % ADMIT_CHUNK == 0:
                await asyncio.sleep(0)
            claimed: bytes | None = None
            built: TxEnvelope | None = None
            try:
                if from_json:
                    built, raw, claimed = _json_tx(item)
                elif type(item) is bytes:
                    raw = item
                else:
                    raise ValueError("each batch item must be an encoded tx (msgpack bin)")
            except ValueError as e:
                rejected.append(Rejection(i, str(e), malformed=True))
                continue
            try:
                env = ledger_app.admit(raw, built)
            except LedgerError as e:
                rejected.append(Rejection(i, e.reason, malformed=_is_structural(e.reason)))
                continue
            tx_id = env.tx_id
            if claimed is not None and claimed != tx_id:
                rejected.append(Rejection(i, "tx_id does not match the transaction", False))
                continue
            if tx_id in seen:
                rejected.append(Rejection(i, "duplicate transaction in request", False))
                continue
            seen.add(tx_id)
            indexes.append(i)
            ids.append(tx_id)
            raws.append(raw)
        return indexes, ids, raws, rejected

    async def get_tx(self, request: web.Request) -> web.Response:
        tx_id = _parse_tx_id(request.match_info["tx_id"])
        wait_ms = _int_param(request, "wait_ms", 0, 0, INT64_MAX)
        wait_ms = min(wait_ms, self.limits.tx_wait_max_ms)
        status = self.node.tx_status(tx_id)
        if wait_ms and (status is None or status["status"] != "committed"):
            await self.node.wait_committed(tx_id, wait_ms)
            status = self.node.tx_status(tx_id)
        if status is None:
            raise ApiError(404, "unknown transaction", tx_id.hex())
        return web.json_response(status)

    async def get_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.node.status())

    async def get_health(self, request: web.Request) -> web.Response:
        ok = self.node.healthy
        return web.json_response(
            {"ok": ok, "node": self.node.config.node_id}, status=200 if ok else 503
        )

    async def get_block(self, request: web.Request) -> web.Response:
        try:
            height = parse_uint(request.match_info["height"], "height", hi=codec.MAX_UINT)
        except BadRequest as e:
            raise ApiError(400, "bad height", e.detail) from None
        form = _txs_param(request)
        if form != TXS_FULL:
            try:
                headers = self._headers(height, 1, form) if height >= 1 else []
            except BlockUnavailable as e:
                return e.response()
            if not headers:
                raise ApiError(404, "no such block", height)
            return web.json_response(header_to_json(headers[0]))
        try:
            block = self.node.get_block(height) if height >= 1 else None
        except BlockUnavailable as e:
            return e.response()
        except StoreError as e:
            raise ApiError(500, "store error", str(e)) from None
        if block is None:
            raise ApiError(404, "no such block", height)
        doc = block_to_json(block, _bool_param(request, "payload"))
        return web.json_response(doc)

    async def get_blocks(self, request: web.Request) -> web.Response:
        form = _txs_param(request)
        page_max = self.limits.blocks_page_max if form == TXS_FULL else HEADERS_PAGE_MAX
        start = _int_param(request, "from", 1, 1, codec.MAX_UINT)
        limit = _int_param(request, "limit", min(_DEFAULT_BLOCKS_LIMIT, page_max), 1, page_max)
        docs: list[dict[str, Any]]
        if form == TXS_FULL:
            payload = _bool_param(request, "payload")
            try:
                blocks = self.node.get_blocks(start, limit)
            except BlockUnavailable as e:
                return e.response()
            except StoreError as e:
                raise ApiError(500, "store error", str(e)) from None
            heights = [b.height for b in blocks]
            docs = [block_to_json(b, payload) for b in blocks]
        else:
            try:
                headers = self._headers(start, limit, form)
            except BlockUnavailable as e:
                return e.response()
            heights = [hd.height for hd in headers]
            docs = [header_to_json(hd) for hd in headers]
        height = self.node.height
        last = heights[-1] if heights else start - 1
        return web.json_response(
            {"blocks": docs, "height": height, "next": last + 1 if last < height else None}
        )

    def _headers(self, start: int, limit: int, form: str) -> list[BlockHeader]:
        """Headers (tx ids too for TXS_IDS) of verified blocks, through the reader that
        verifies what is served; BlockUnavailable as for whole blocks."""
        reader = self.node.reader
        if reader is None:
            raise ApiError(503, "not ready", "the node has not opened its store yet")
        try:
            return reader.read_headers(start, limit, with_tx_ids=form == TXS_IDS)
        except StoreError as e:
            raise ApiError(500, "store error", str(e)) from None


def _is_structural(reason: str) -> bool:
    """Decoder errors (CodecError reasons start with "tx" / "body") are malformed input."""
    return reason.startswith(("tx:", "tx.", "body:"))


def create_app(node: Node) -> web.Application:
    """The node's aiohttp application: client API + peer endpoint, JSON errors everywhere."""
    limits = node.config.limits
    # Bodies are read with explicit limits per endpoint; this is only aiohttp's own backstop.
    app = web.Application(
        middlewares=[json_errors, read_access(node)],
        client_max_size=max(limits.max_body_bytes, limits.peer_max_body_bytes),
    )
    harden_app(app)
    api = Api(node)
    app.router.add_post("/tx", api.post_tx)
    app.router.add_get("/tx/{tx_id}", api.get_tx)
    app.router.add_get("/status", api.get_status)
    app.router.add_get("/health", api.get_health)
    app.router.add_get("/blocks", api.get_blocks)
    app.router.add_get("/blocks/{height}", api.get_block)
    node.transport.add_routes(app)
    # Used admin nonces persist beside the data directory (a wipe must not re-open a replay).
    data_dir = node.config.data_dir
    nonce_file = data_dir.parent / f"{data_dir.name}.admin-nonces"
    install_api_faults(app, node.faults, node.config.operator_public_key, nonce_file)
    install_ops(app, node)
    return app
