"""An in-process stand-in for a node's read API as the tools see it (GET /status, /healthz,
/readyz, /audit, /metrics, /events in the documented shapes), for the dashboard's and the
timeline's tests before and besides the real node."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class FakeNode:
    node: int
    height: int = 0
    view: int = 0
    n: int = 4
    committed_txs: int = 0
    alive: bool = True
    ready: bool = True
    agreement: str = "agree"
    evidence: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    latency_buckets: dict[str, int] = field(default_factory=dict)
    events_doc: Any = None
    """If set, GET /events answers this instead (a misbehaving node)."""
    now_ms: int = 0

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "view": self.view,
            "primary": self.view % self.n,
            "is_primary": self.view % self.n == self.node,
            "in_view_change": False,
            "height": self.height,
            "mempool_size": 0,
            "healthy": True,
            "counters": {"committed_txs": self.committed_txs},
            "faults": {"enabled": True, "active": self.faults},
        }

    def metrics(self) -> str:
        lines = [
            "# TYPE medchain_committed_transactions_total counter",
            f"medchain_committed_transactions_total {self.committed_txs}",
            "# TYPE medchain_commit_latency_seconds histogram",
        ]
        for le, count in self.latency_buckets.items():
            lines.append(f'medchain_commit_latency_seconds_bucket{{le="{le}"}} {count}')
        total = max(self.latency_buckets.values(), default=0)
        lines += [
            f"medchain_commit_latency_seconds_count {total}",
            "medchain_commit_latency_seconds_sum 0",
        ]
        return "\n".join(lines) + "\n"

    def app(self) -> web.Application:
        app = web.Application()

        async def status(_r: web.Request) -> web.Response:
            return web.json_response(self.status())

        async def healthz(_r: web.Request) -> web.Response:
            return web.json_response({"ok": self.alive}, status=200 if self.alive else 503)

        async def readyz(_r: web.Request) -> web.Response:
            if self.ready:
                return web.json_response({"ready": True})
            return web.json_response({"ready": False, "reason": "catching up"}, status=503)

        async def audit(_r: web.Request) -> web.Response:
            return web.json_response(
                {
                    "agreement": self.agreement,
                    "evidence": {
                        "count": self.evidence,
                        "latest": [{"kind": "bad-block", "peer": 2, "height": 7}],
                    },
                }
            )

        async def metrics(_r: web.Request) -> web.Response:
            return web.Response(text=self.metrics(), content_type="text/plain")

        async def events(r: web.Request) -> web.Response:
            if self.events_doc is not None:
                return web.json_response(self.events_doc)
            since = int(r.query.get("since", "0"))
            limit = min(int(r.query.get("limit", "1000")), 5000)
            after = [e for e in self.events if e["t_ms"] >= since][:limit]
            nxt = after[-1]["t_ms"] + 1 if after else since
            return web.json_response(
                {
                    "node": self.node,
                    "now_ms": self.now_ms,
                    "next": nxt,
                    "dropped": 0,
                    "events": after,
                }
            )

        app.router.add_get("/status", status)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/audit", audit)
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/events", events)
        return app


def event(
    t_ms: int,
    kind: str,
    *,
    view: int | None = 0,
    seq: int | None = None,
    peer: int | None = None,
    detail: str = "",
) -> dict[str, Any]:
    return {"t_ms": t_ms, "kind": kind, "view": view, "seq": seq, "peer": peer, "detail": detail}
