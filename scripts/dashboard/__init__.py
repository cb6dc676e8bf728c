"""``medchain dashboard``: the cluster at a glance, live, in a browser.

    medchain dashboard [--dir DIR | --nodes URL,...] [--host H] [--port P] [--interval S]

Polls every node (``scripts.dashboard.probe``, through ``NodeClient``), computes what the page
shows (``scripts.dashboard.model``: each node's height, view, primary, lag, health and audit
state; throughput and commit latency over the last minutes; view changes, faults and audit
findings as they happen) and serves one page that updates itself over server-sent events
(``scripts.dashboard.server``). The page's HTML, script and style ship in the package
(``scripts/dashboard/static``): no build step, nothing fetched from the internet, drawn on
plain canvas. It listens on 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from scripts.argtypes import positive_float, positive_int
from scripts.output import CliError

DEFAULT_PORT = 8700


def dashboard_nodes(args: argparse.Namespace) -> dict[int, str]:
    """Node id -> URL from --nodes (ids by position) or the cluster in --dir."""
    if args.nodes:
        from scripts.audit.targets import url_targets

        return {i: t.url for i, t in enumerate(url_targets(args.nodes)) if t.url}
    from scripts.cluster import ClusterProcesses

    specs = ClusterProcesses(args.dir).specs()
    if not specs:
        raise CliError(f"{args.dir}: no cluster here; give --nodes URL,URL,... instead")
    return {s.index: s.url for s in specs}


def cmd_dashboard(args: argparse.Namespace) -> int:
    from scripts.dashboard.server import run

    if args.port > 65535:
        raise CliError(f"--port {args.port} is not a TCP port")
    run(dashboard_nodes(args), host=args.host, port=args.port, interval_s=args.interval)
    return 0


def add_dashboard_parser(sub: Any) -> None:
    from scripts.cluster import DEFAULT_CLUSTER_DIR

    p = sub.add_parser(
        "dashboard",
        help="serve a live web page of the cluster (nodes, throughput, latency, events)",
        description="Poll every node and serve one page showing the cluster at a glance, "
        "updated live over server-sent events; works offline (no CDN). Stop with Ctrl-C.",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help="cluster directory (default: %(default)s)",
    )
    where.add_argument("--nodes", metavar="URL,...", help="nodes by URL instead of --dir")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=positive_int, default=DEFAULT_PORT, help="port (default: %(default)s)"
    )
    p.add_argument(
        "--interval",
        type=positive_float,
        default=1.0,
        help="seconds between polls of the nodes (default: %(default)s)",
    )
    p.set_defaults(func=cmd_dashboard)


__all__ = ["add_dashboard_parser", "cmd_dashboard", "dashboard_nodes"]
