"""Reporting the audit: the rich table and verdict for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.table import Table

from scripts.audit.compare import AGREE, DIVERGED, INVALID, LAGGING, Divergence
from scripts.audit.view import UNREACHABLE, NodeView
from scripts.client import Consortium
from scripts.output import dash, stdout

_COLOURS = {AGREE: "green", LAGGING: "yellow", DIVERGED: "red", INVALID: "red", UNREACHABLE: "dim"}
_SHOWN_DIVERGENCES = 10


def audit_json(
    views: Sequence[NodeView],
    divergences: Sequence[Divergence],
    keys: Consortium,
    start: int,
    *,
    ok: bool,
    common: int,
) -> dict[str, Any]:
    return {
        "ok": ok,
        "keys": keys.source,
        "from_height": start,
        "common_height": common,
        "nodes": [v.to_json() for v in views],
        "divergences": [d.to_json() for d in divergences],
    }


def print_table(views: Sequence[NodeView], keys: Consortium, start: int) -> None:
    what = "whole chains" if start == 1 else f"heights {start}.."
    table = Table(title=f"medchain audit ({what}; keys from {keys.source})")
    for col in ("node", "source"):
        table.add_column(col, no_wrap=True)
    for col in ("height", "head", "agrees to", "lag"):
        table.add_column(col, justify="left" if col == "head" else "right", no_wrap=True)
    table.add_column("certs", no_wrap=True)
    for col in ("evidence", "quarant.", "repaired"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for v in views:
        if v.height is None:
            certs = "-"
        elif v.bad_height is None:
            certs = "ok"
        else:
            certs = f"[red]bad at {v.bad_height}[/]"
        table.add_row(
            v.name,
            v.source,
            dash(v.height),
            "-" if v.head_hash is None else v.head_hash[:12],
            dash(v.agrees_through),
            dash(v.lag),
            certs,
            dash(v.evidence),
            dash(v.quarantined),
            dash(v.repaired),
            f"[{_COLOURS.get(v.status, 'white')}]{v.status}[/]",
        )
    stdout.print(table)


def print_verdict(views: Sequence[NodeView], divergences: Sequence[Divergence], ok: bool) -> None:
    for v in views:
        if v.bad_height is not None:
            stdout.print(f"[red]{v.name}[/]: block {v.bad_height} fails: {v.bad_reason}")
        if v.status == UNREACHABLE and v.error:
            stdout.print(f"[dim]{v.name}: not audited: {v.error.lstrip('; ')}[/]")
    for d in divergences[:_SHOWN_DIVERGENCES]:
        parts = "; ".join(f"{h[:16]} held by {', '.join(ns)}" for h, ns in d.by_hash.items())
        stdout.print(f"[red]divergence at height {d.height}[/]: {parts}")
    if len(divergences) > _SHOWN_DIVERGENCES:
        more = len(divergences) - _SHOWN_DIVERGENCES
        stdout.print(f"[red]... {more} more divergent heights[/]")
    if ok:
        stdout.print("[green]OK[/]: every audited chain verifies and agrees")
    elif not any(v.status != UNREACHABLE for v in views):
        stdout.print("[red]FAILED[/]: no node could be audited")
    else:
        stdout.print("[red]FAILED[/]: divergence or failed verification (see above)")


def print_evidence_results(results: Sequence[dict[str, Any]]) -> None:
    """One line per checked evidence record (see :func:`scripts.audit.evidence.check_records`)."""
    for r in results:
        where = f"{r['kind']} at height {r['height']}, reported by replica {r['reporter']}"
        if r["ok"]:
            extra = f"; replicas {r['implicated']} signed both" if r.get("implicated") else ""
            stdout.print(
                f"[green]VALID[/] record {r['index']}: {where}, accused {r['accused']}{extra}"
            )
        else:
            stdout.print(f"[red]INVALID[/] record {r['index']}: {where}: {r['problem']}")
