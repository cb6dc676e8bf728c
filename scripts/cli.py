"""``medchain``: the command line of a medchain consortium.

    medchain init     --nodes N --dir DIR      keys and one config per hospital node
    medchain node     --config FILE            run one node in the foreground (node.main)
    medchain cluster  up|status|down|...       run a local cluster of node processes
    medchain submit   ...                      sign patient records and commit them
    medchain verify   --node URL | --db FILE   check a whole chain offline
    medchain audit | fault | scenario | bench  compare chains, inject faults, measure
    medchain dashboard | timeline              watch a cluster live, merge its protocol events

Every command is registered here, statically: every tool ships with medchain. Each tool module
adds its own parser (``add_*_parser``) and imports its heavy libraries inside the commands that
need them. Every command that prints data takes ``--json`` (machine-readable, on stdout); human
output goes through ``rich``. Errors go to stderr as ``medchain: error: ...`` with exit status 1
(2 for bad usage), so scripts can rely on the exit status alone.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from scripts.argtypes import positive_float, positive_int
from scripts.audit import add_audit_parser
from scripts.bench import add_bench_parser
from scripts.client import NodeError, probe_status
from scripts.cluster import (
    DEFAULT_CLUSTER_DIR,
    NODE_MODULE,
    STARTUP_TIMEOUT_S,
    STATUS_HTTP_TIMEOUT_S,
    STOP_TIMEOUT_S,
    ClusterError,
    ClusterLayout,
    ClusterProcesses,
    hospital_id,
)
from scripts.credentials import use_cluster_credentials
from scripts.dashboard import add_dashboard_parser
from scripts.faultctl import add_fault_parser
from scripts.output import CliError, dash, print_json, short_hash, stderr, stdout
from scripts.provision import DEFAULT_NODES, init_cluster
from scripts.scenario import add_scenario_parser
from scripts.submit import add_submit_parser
from scripts.timeline import add_timeline_parser
from scripts.verify import add_verify_parser

# =============================================================================================
# init and node


def cmd_init(args: argparse.Namespace) -> int:
    result = init_cluster(
        args.dir,
        args.nodes,
        base_port=args.base_port,
        force=args.force,
        tls=args.tls or None,
        open_access=args.open_access,
    )
    if result.open_access:
        stderr.print(
            "[bold yellow]access is OPEN[/]: anyone who can reach these nodes reads every "
            "record's metadata ([access] open = true in each config; init --closed to close)"
        )
    _print_endpoints(args, result.root, [(i, url) for i, url, _ in result.nodes], "initialised")
    return 0


def _print_endpoints(
    args: argparse.Namespace, root: Path, nodes: Sequence[tuple[int, str]], what: str
) -> None:
    if args.json:
        print_json(
            {
                "dir": str(root),
                "nodes": [
                    {"id": i, "url": url, "config": str(ClusterLayout(root).config_path(i))}
                    for i, url in nodes
                ],
            }
        )
        return
    table = Table(title=f"medchain cluster {what}: {root}")
    table.add_column("node", justify="right")
    table.add_column("hospital")
    table.add_column("url")
    table.add_column("config")
    for i, url in nodes:
        table.add_row(str(i), hospital_id(i), url, str(ClusterLayout(root).config_path(i)))
    stdout.print(table)


def cmd_node(args: argparse.Namespace) -> int:
    # Replaced by the node's own entry point: a node process loads none of the tooling.
    argv = [sys.executable, "-m", NODE_MODULE, "--config", str(args.config)]
    if args.full_verify:
        argv.append("--full-verify")
    argv += ["--log-format", args.log_format]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


# =============================================================================================
# cluster


def cmd_cluster_up(args: argparse.Namespace) -> int:
    layout = ClusterLayout(args.dir)
    existing = layout.node_indices()
    if not existing:
        init_cluster(
            args.dir,
            args.nodes or DEFAULT_NODES,
            base_port=args.base_port,
            tls=args.tls or None,
            open_access=args.open_access,
        )
        use_cluster_credentials(args.dir)
    elif args.nodes is not None and args.nodes != len(existing):
        raise CliError(
            f"{layout.root} holds a {len(existing)}-node cluster, not {args.nodes}; "
            "use another --dir or `medchain init --force`"
        )
    procs = ClusterProcesses(args.dir)
    try:
        started = procs.up(timeout=args.timeout)
    except ClusterError as exc:
        raise CliError(
            f"{exc}\nstop the rest with: medchain cluster down --dir {layout.root}"
        ) from exc
    specs = procs.specs()
    if not args.json:
        already = len(specs) - len(started)
        stderr.print(f"started {len(started)} node(s), {already} already running")
    _print_endpoints(args, layout.root, [(s.index, s.url) for s in specs], "up")
    return 0


def cluster_status(root: Path) -> list[dict[str, Any]]:
    """One row per node: process state plus what its GET /status says (fetched in parallel)."""
    procs = ClusterProcesses(root)
    specs = procs.specs()
    if not specs:
        raise CliError(f"{procs.root}: no cluster here (run `medchain cluster up` first)")
    states = [procs.state(s.index) for s in specs]
    # A suspended (SIGSTOP) node would only make us wait for the HTTP timeout.
    urls = [
        sp.url if st.alive and not st.stopped else None
        for sp, st in zip(specs, states, strict=True)
    ]
    statuses = asyncio.run(_probe_all(urls))
    rows = []
    for spec, state, status in zip(specs, states, statuses, strict=True):
        st = status or {}
        rows.append(
            {
                "id": spec.index,
                "pid": state.pid,
                "url": spec.url,
                "view": st.get("view"),
                "primary": st.get("primary"),
                "height": st.get("height"),
                "head_hash": st.get("head_hash"),
                "alive": state.alive,
                "suspended": state.stopped,
                "serving": status is not None,
            }
        )
    return rows


async def _probe_all(urls: Sequence[str | None]) -> list[dict[str, Any] | None]:
    async def one(url: str | None) -> dict[str, Any] | None:
        return None if url is None else await probe_status(url, STATUS_HTTP_TIMEOUT_S)

    return list(await asyncio.gather(*(one(u) for u in urls)))


def cmd_cluster_status(args: argparse.Namespace) -> int:
    rows = cluster_status(args.dir)
    if args.json:
        print_json(rows)
        return 0
    table = Table(title=f"medchain cluster: {ClusterLayout(args.dir).root}")
    for col, justify in (
        ("id", "right"),
        ("pid", "right"),
        ("url", "left"),
        ("view", "right"),
        ("primary", "right"),
        ("height", "right"),
        ("head_hash", "left"),
        ("alive", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        alive = "[green]yes[/]" if r["alive"] else "[red]no[/]"
        if r["suspended"]:
            alive = "[yellow]suspended[/]"
        elif r["alive"] and not r["serving"]:
            alive = "[yellow]not answering[/]"
        table.add_row(
            str(r["id"]),
            dash(r["pid"]),
            r["url"],
            dash(r["view"]),
            dash(r["primary"]),
            dash(r["height"]),
            short_hash(r["head_hash"]),
            alive,
        )
    stdout.print(table)
    return 0


def cmd_cluster_down(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    stopped = procs.down(timeout=args.timeout)
    if args.json:
        print_json({"dir": str(procs.root), "stopped": stopped})
    else:
        stdout.print(f"stopped {len(stopped)} node(s) of {procs.root}")
    return 0


def cmd_cluster_start_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    pid = procs.start(_node_index(procs, args.index))
    procs.wait_ready([args.index], timeout=args.timeout)
    return _report_node(args, {"id": args.index, "pid": pid, "action": "started"})


def cmd_cluster_stop_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    was_running = procs.stop(_node_index(procs, args.index), timeout=args.timeout)
    return _report_node(args, {"id": args.index, "was_running": was_running, "action": "stopped"})


def cmd_cluster_kill_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    pid = procs.kill(_node_index(procs, args.index), args.signal)
    name = signal.Signals(args.signal).name
    return _report_node(args, {"id": args.index, "pid": pid, "action": f"sent {name}"})


def cmd_cluster_wipe_node(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    procs.wipe(_node_index(procs, args.index))
    return _report_node(args, {"id": args.index, "action": "wiped"})


def _node_index(procs: ClusterProcesses, index: int) -> int:
    if index not in procs.indices():
        raise CliError(f"no node {index} in {procs.root} (nodes: {procs.indices()})")
    return index


def _report_node(args: argparse.Namespace, result: dict[str, Any]) -> int:
    if args.json:
        print_json(result)
    else:
        extra = f" (pid {result['pid']})" if result.get("pid") else ""
        stdout.print(f"node {result['id']}: {result['action']}{extra}")
    return 0


def parse_signal(text: str) -> int:
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise argparse.ArgumentTypeError(f"unknown signal {text!r}") from None


def _add_dir(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR})",
    )


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medchain",
        description="A PBFT consortium blockchain for hospitals: run, measure and break it.",
        epilog="Run `medchain COMMAND --help` for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "init",
        help="create keys and node configs for a new cluster",
        description="Generate an Ed25519 key per hospital node, one client key per hospital "
        "(hospital-0, hospital-1, ...) and an operator key (all mode 0600 in DIR/keys), and "
        "one config per node (DIR/node{i}.toml) on 127.0.0.1.",
    )
    p.add_argument("--nodes", type=positive_int, required=True, help="number of nodes (>= 4)")
    _add_dir(p)
    p.add_argument(
        "--base-port",
        type=positive_int,
        help="node i listens on BASE_PORT+i (default: free ports chosen by the OS)",
    )
    p.add_argument(
        "--force", action="store_true", help="replace an existing cluster (its keys and chains)"
    )
    _add_tls_flags(p)
    _add_json(p)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser(
        "node",
        help="run one node in the foreground",
        description=f"Run one node until SIGINT/SIGTERM (the same as python -m {NODE_MODULE}).",
    )
    p.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    p.add_argument(
        "--full-verify",
        action="store_true",
        help="re-verify every stored block on start (default: links of all, the newest fully)",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text (default) or json: one JSON object per line with node, view and seq",
    )
    p.set_defaults(func=cmd_node)

    _add_cluster_parser(sub)
    add_submit_parser(sub)
    add_verify_parser(sub)
    add_audit_parser(sub)
    add_fault_parser(sub)
    add_scenario_parser(sub)
    add_bench_parser(sub)
    add_dashboard_parser(sub)
    add_timeline_parser(sub)
    return parser


def _add_tls_flags(p: argparse.ArgumentParser, prefix: str = "") -> None:
    p.add_argument(
        "--tls",
        action="store_true",
        help=f"{prefix}a cluster CA and per-node and per-client certificates; nodes serve "
        "https only and reads need a client certificate or read token (MEDCHAIN_TLS=1 too)",
    )
    access = p.add_mutually_exclusive_group()
    access.add_argument(
        "--open",
        dest="open_access",
        action="store_true",
        default=None,
        help=f"{prefix}anyone may read (default without --tls: a dev cluster)",
    )
    access.add_argument(
        "--closed",
        dest="open_access",
        action="store_false",
        help=f"{prefix}reads need a registered key (default with --tls)",
    )


def _add_cluster_parser(sub: Any) -> None:
    cluster = sub.add_parser(
        "cluster",
        help="run a local cluster of node processes",
        description="Start, inspect and stop a local cluster (one process per node, logs in "
        "DIR/logs, pid files in DIR/run).",
    )
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")

    p = csub.add_parser(
        "up",
        help="init if needed, start every node that is down, wait until all serve",
        description="Create the cluster if DIR holds none, start the nodes that are not "
        "running, and return once every node answers GET /status.",
    )
    p.add_argument(
        "--nodes",
        type=positive_int,
        help=f"number of nodes for a new cluster (default {DEFAULT_NODES}); must match an "
        "existing one",
    )
    _add_dir(p)
    p.add_argument("--base-port", type=positive_int, help="for a new cluster: see `init`")
    _add_tls_flags(p, "for a new cluster: ")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=STARTUP_TIMEOUT_S,
        help=f"seconds to wait for every node to serve (default {STARTUP_TIMEOUT_S:.0f})",
    )
    _add_json(p)
    p.set_defaults(func=cmd_cluster_up)

    p = csub.add_parser("status", help="one row per node: pid, url, view, height, head hash")
    _add_dir(p)
    _add_json(p)
    p.set_defaults(func=cmd_cluster_status)

    p = csub.add_parser(
        "down",
        help="stop every node (SIGTERM, then SIGKILL after the timeout)",
    )
    _add_dir(p)
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=STOP_TIMEOUT_S,
        help=f"seconds to wait after SIGTERM before SIGKILL (default {STOP_TIMEOUT_S:.0f})",
    )
    _add_json(p)
    p.set_defaults(func=cmd_cluster_down)

    for name, func, text in (
        ("start-node", cmd_cluster_start_node, "start node I (if down) and wait until it serves"),
        ("stop-node", cmd_cluster_stop_node, "stop node I (SIGTERM, then SIGKILL)"),
        ("kill-node", cmd_cluster_kill_node, "send a signal to node I (default KILL)"),
        ("wipe-node", cmd_cluster_wipe_node, "erase stopped node I's data (keeps keys, config)"),
    ):
        p = csub.add_parser(name, help=text, description=text)
        p.add_argument("index", type=int, metavar="I", help="node index")
        _add_dir(p)
        if name == "kill-node":
            p.add_argument(
                "--signal",
                type=parse_signal,
                default=int(signal.SIGKILL),
                help="signal name or number: KILL, TERM, STOP, CONT, ... (default KILL)",
            )
        if name in ("start-node", "stop-node"):
            default = STARTUP_TIMEOUT_S if name == "start-node" else STOP_TIMEOUT_S
            p.add_argument(
                "--timeout",
                type=positive_float,
                default=default,
                help=f"seconds to wait (default {default:.0f})",
            )
        _add_json(p)
        p.set_defaults(func=func)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cluster_dir = getattr(args, "dir", None)
    if isinstance(cluster_dir, Path) and ClusterLayout(cluster_dir).node_indices():
        use_cluster_credentials(cluster_dir)  # its CA, client certificate and read tokens
    try:
        code: int = args.func(args)
    except (CliError, ClusterError, NodeError) as exc:
        stderr.print(f"medchain: error: {exc}", markup=False)
        return 1
    except KeyboardInterrupt:
        stderr.print("medchain: interrupted", markup=False)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
