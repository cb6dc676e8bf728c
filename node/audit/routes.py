"""The audit's HTTP routes: ``GET /audit`` (the report) and ``GET /audit/evidence``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Final

from aiohttp import web

from node.audit.auditor import Auditor
from node.http import BadRequest, parse_uint

MAX_EVIDENCE_PAGE: Final = 200


def _int_param(
    request: web.Request, name: str, default: int | None, lo: int, hi: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        return parse_uint(raw, name, lo=lo, hi=hi)
    except BadRequest as e:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": "bad query parameter", "detail": e.detail}),
            content_type="application/json",
        ) from None


def audit_routes(auditor: Auditor | Callable[[], Auditor | None]) -> list[web.RouteDef]:
    """``GET /audit`` (the report) and ``GET /audit/evidence?limit=&before=`` (records, newest
    first; ``before`` pages by the records' ``seq``).

    ``auditor`` may be a callable returning the current auditor (or None while the node is not
    started: 503), for an app built before the node opens its store.
    """

    def current() -> Auditor:
        a = auditor if isinstance(auditor, Auditor) else auditor()
        if a is None:
            raise web.HTTPServiceUnavailable(
                text=json.dumps({"error": "audit not running", "detail": "node not started"}),
                content_type="application/json",
            )
        return a

    async def get_audit(request: web.Request) -> web.Response:
        return web.json_response(current().report())

    async def get_evidence(request: web.Request) -> web.Response:
        a = current()
        limit = _int_param(request, "limit", 50, 1, MAX_EVIDENCE_PAGE)
        before = _int_param(request, "before", None, 1, 1 << 62)
        assert limit is not None
        return web.json_response(
            {"count": a.audit_log.evidence_count(), "evidence": a.evidence(limit, before)}
        )

    return [web.get("/audit", get_audit), web.get("/audit/evidence", get_evidence)]
