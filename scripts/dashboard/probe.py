"""One poll of one node for the dashboard: GET /status, then /healthz (or /health), /readyz,
/audit and /metrics, each without retry and with a short timeout, through ``NodeClient``.

A node that does not answer /status is down for this round and is asked nothing else (a
SIGSTOPped node would cost a timeout per request). An endpoint the node does not have (404:
an older node, the cross-audit off) is simply missing from the probe.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from scripts.client import NO_RETRY, NodeClient, NodeError
from scripts.dashboard.model import Histogram, Probe

PROBE_TIMEOUT_S: Final = 1.5
MAX_METRICS_BYTES: Final = 4 << 20
LATENCY_METRIC: Final = "medchain_commit_latency_seconds"
COMMITTED_METRIC: Final = "medchain_committed_transactions_total"


def node_client(pool: NodeClient, url: str) -> NodeClient:
    return pool.at(url, retry=NO_RETRY, timeout_s=PROBE_TIMEOUT_S, max_body_bytes=MAX_METRICS_BYTES)


async def probe(client: NodeClient, node: int) -> Probe:
    t = time.time()
    try:
        status = await client.status()
    except NodeError as exc:
        return Probe(node, client.url, t, None, error=_why_down(exc))
    health, ready, audit, metrics = await asyncio.gather(
        _health(client), _get(client, "/readyz"), _get(client, "/audit"), _get(client, "/metrics")
    )
    ready_ok: bool | None = None
    reason: str | None = None
    if ready is not None:
        ready_ok = ready[0] == 200
        if not ready_ok:
            reason = _reason(ready[1])
    committed, latency = (
        parse_metrics(metrics[2]) if metrics and metrics[0] == 200 else (None, None)
    )
    return Probe(
        node,
        client.url,
        t,
        status,
        alive=health,
        ready=ready_ok,
        ready_reason=reason,
        audit=audit[1] if audit and audit[0] == 200 and isinstance(audit[1], dict) else None,
        committed_txs=committed,
        latency=latency,
    )


async def _get(client: NodeClient, path: str) -> tuple[int, Any, bytes] | None:
    """(status, JSON doc or None, raw body), or None if the node has no such endpoint or did
    not answer."""
    try:
        answer = await client.send("GET", path)
    except NodeError:
        return None
    if answer.status in (404, 405):
        return None
    return answer.status, answer.doc, answer.raw


async def _health(client: NodeClient) -> bool | None:
    answer = await _get(client, "/healthz")
    if answer is None:
        answer = await _get(client, "/health")  # a node from before /healthz
    return None if answer is None else answer[0] == 200


def _why_down(exc: NodeError) -> str:
    """A short reason for the page: the transport error's kind, or the node's answer."""
    cause = exc.transport_error
    if isinstance(cause, TimeoutError):
        return f"no answer within {PROBE_TIMEOUT_S:g}s"
    if cause is not None:
        return f"no answer ({type(cause).__name__})"
    return (exc.error or str(exc))[:200]


def _reason(doc: object) -> str:
    if isinstance(doc, dict):
        for key in ("reason", "detail", "error"):
            if isinstance(doc.get(key), str):
                return str(doc[key])[:200]
    return "not ready"


def parse_metrics(raw: bytes) -> tuple[float | None, Histogram | None]:
    """The committed-transactions counter and the commit-latency histogram of a /metrics
    text (summed over their labels); (None, None) for a text that does not parse."""
    from prometheus_client.parser import text_string_to_metric_families

    committed: float | None = None
    buckets: dict[float, float] = {}
    count: float | None = None
    try:
        for family in text_string_to_metric_families(raw.decode("utf-8", "replace")):
            for s in family.samples:
                if s.name == COMMITTED_METRIC:
                    committed = (committed or 0.0) + s.value
                elif s.name == LATENCY_METRIC + "_bucket" and "le" in s.labels:
                    le = float(s.labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + s.value
                elif s.name == LATENCY_METRIC + "_count":
                    count = (count or 0.0) + s.value
    except (ValueError, TypeError, IndexError):
        return None, None
    latency = None
    if buckets:
        latency = Histogram(tuple(sorted(buckets.items())), count or max(buckets.values()))
    return committed, latency
