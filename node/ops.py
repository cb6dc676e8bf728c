"""The operations endpoints of a node: ``/metrics``, ``/events``, ``/healthz``, ``/readyz``.

``GET /metrics``  Prometheus text (or OpenMetrics, if the scraper asks for it) from the node's
                  own registry (``node.metrics``).
``GET /events?since=T_MS&limit=N``  the flight recorder (``node.recorder``): ``{"node",
                  "now_ms", "next", "dropped", "events": [{"t_ms", "kind", "view", "seq",
                  "peer", "detail"}]}``; ``since`` defaults to 0, ``limit`` to 1000 (at most
                  5000); pass ``next`` as ``since`` to continue.
``GET /healthz``  200 while the node is alive (its consensus task runs), else 503.
``GET /readyz``   200 in normal operation and caught up, else 503 with the reason: the node is
                  not started or failed, paused by a fault, in a view change, or more than
                  ``[limits] ready_max_lag_seqs`` behind the peers it hears from.

A middleware counts every answer >= 400 of every route by route, status and error (the
``error`` of the uniform JSON body), for ``medchain_http_rejections_total``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.exposition import choose_encoder

from node.http import BadRequest, json_error, query_uint

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from node.runtime import Node

EVENTS_LIMIT_DEFAULT: Final = 1000
EVENTS_LIMIT_MAX: Final = 5000
_MAX_SINCE: Final = (1 << 63) - 1
_MAX_ERROR_BODY: Final = 64 * 1024
"""A longer error body is counted without its ``error`` (never parsed)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def readiness(node: Node) -> str | None:
    """Why the node is not ready, or None if it is."""
    if not node.healthy:
        return "consensus task not running" if node.fatal is None else "consensus task failed"
    if node.faults.enabled and node.faults.paused:
        return "paused by an injected fault"
    r = node.replica
    if r.in_view_change:
        return f"view change to view {r.view} in progress"
    lag = node.observer.lag(r)
    bound = node.observer.ready_max_lag_seqs
    if lag > bound:
        return f"{lag} seqs behind the peers it hears from (bound {bound})"
    return None


class Ops:
    """The handlers, bound to one node; the registry is built on the first scrape."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._registry: CollectorRegistry | None = None

    async def get_metrics(self, request: web.Request) -> web.Response:
        if self._registry is None:
            from node.metrics import node_registry

            self._registry = node_registry(self.node)
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        resp = web.Response(body=encoder(self._registry))
        resp.headers["Content-Type"] = content_type
        return resp

    async def get_events(self, request: web.Request) -> web.Response:
        try:
            since = query_uint(request, "since", 0, hi=_MAX_SINCE)
            limit = query_uint(request, "limit", EVENTS_LIMIT_DEFAULT, lo=1, hi=EVENTS_LIMIT_MAX)
        except BadRequest as e:
            return json_error(400, "bad query parameter", e.detail)
        node = self.node
        page = node.observer.ring.page(since, limit)
        return web.json_response(
            {
                "node": node.node_id,
                "now_ms": node.clock(),
                "next": page.next,
                "dropped": page.dropped,
                "events": [e.to_json() for e in page.events],
            }
        )

    async def get_healthz(self, request: web.Request) -> web.Response:
        ok = self.node.healthy
        return web.json_response({"ok": ok, "node": self.node.node_id}, status=200 if ok else 503)

    async def get_readyz(self, request: web.Request) -> web.Response:
        node = self.node
        reason = readiness(node)
        doc: dict[str, object] = {"ready": reason is None, "node": node.node_id, "reason": reason}
        if node.started:
            r = node.replica
            doc.update(
                view=r.view,
                in_view_change=r.in_view_change,
                behind_seqs=node.observer.lag(r),
                max_lag_seqs=node.observer.ready_max_lag_seqs,
            )
        return web.json_response(doc, status=200 if reason is None else 503)


def rejections_middleware(node: Node) -> Middleware:
    """Count every error answer (status >= 400) by route, status and the body's ``error``."""

    @web.middleware
    async def count_rejections(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status >= 400:
                node.observer.on_http_rejection(_route(request), e.status, e.reason)
            raise
        if resp.status >= 400:
            node.observer.on_http_rejection(_route(request), resp.status, _error_of(resp))
        return resp

    return count_rejections


def _route(request: web.Request) -> str:
    """The route's pattern (``/tx/{tx_id}``), never the raw path: bounded label values."""
    info = request.match_info
    route = getattr(info, "route", None)
    resource = getattr(route, "resource", None)
    return resource.canonical if resource is not None else "unmatched"


def _error_of(resp: web.StreamResponse) -> str:
    body = getattr(resp, "body", None)
    if not isinstance(body, bytes) or len(body) > _MAX_ERROR_BODY:
        return "unknown"
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "unknown"
    error = doc.get("error") if isinstance(doc, dict) else None
    return error if isinstance(error, str) else "unknown"


def install_ops(app: web.Application, node: Node) -> None:
    """The operations routes, and the rejection counter as the outermost middleware (it sees
    the final answer of every other middleware)."""
    ops = Ops(node)
    app.router.add_get("/metrics", ops.get_metrics)
    app.router.add_get("/events", ops.get_events)
    app.router.add_get("/healthz", ops.get_healthz)
    app.router.add_get("/readyz", ops.get_readyz)
    app.middlewares.insert(0, rejections_middleware(node))
