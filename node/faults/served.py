"""Served-block alteration: a byzantine node's GET /blocks and GET /blocks/{height}.

While the layer's byzantine mode is ``alter_blocks``, :func:`served_blocks_middleware` rewrites
every block the API serves through :func:`alter_block_json`, so the handlers themselves never
know about faults. (Blocks sent to peers in state transfer are altered on the way out, by
:func:`node.faults.byzantine.alter_certified_block`.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from node.faults.layer import FaultLayer

BLOCK_ROUTES: Final = frozenset({"/blocks", "/blocks/{height}"})
"""The API routes that serve blocks: GET /blocks answers a page, GET /blocks/{height} one."""


def alter_block_json(doc: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a served block (``node.ledger.block_to_json``) with one transaction altered:
    its payload (when served) or else its payload hash; a block without transactions gets a
    later timestamp. Whoever verifies the served chain must notice."""
    out = dict(doc)
    txs = out.get("txs")
    if isinstance(txs, list) and txs and isinstance(txs[0], Mapping):
        tx0 = dict(txs[0])
        field_name = "payload" if isinstance(tx0.get("payload"), str) else "payload_hash"
        tx0[field_name] = _flip_hex(str(tx0.get(field_name, "")))
        out["txs"] = [tx0, *txs[1:]]
        return out
    ts = out.get("timestamp_ms")
    out["timestamp_ms"] = ts + 1 if type(ts) is int else 1
    return out


def _flip_hex(text: str) -> str:
    if len(text) < 2:
        return "00"
    try:
        first = int(text[:2], 16) ^ 0xFF
    except ValueError:
        return "00" + text[2:]
    return f"{first:02x}{text[2:]}"


def served_blocks_middleware(layer: FaultLayer) -> Middleware:
    """An aiohttp middleware that alters the blocks of successful block answers while
    ``layer`` plays a byzantine block server; every other answer passes through untouched."""

    @web.middleware
    async def alter_served_blocks(request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        if (
            not layer.serves_altered_blocks
            or resp.status != 200
            or not isinstance(resp, web.Response)
            or request.match_info.route.resource is None
            or request.match_info.route.resource.canonical not in BLOCK_ROUTES
        ):
            return resp
        doc = json.loads(resp.text or "null")
        if "blocks" in doc:  # a page of blocks
            doc["blocks"] = [alter_block_json(b) for b in doc["blocks"]]
        else:
            doc = alter_block_json(doc)
        return web.json_response(doc, status=resp.status)

    return alter_served_blocks


__all__ = ["alter_block_json", "served_blocks_middleware"]
