"""``medchain fault ...``: inject faults into a running local cluster.

    medchain fault apply   --dir DIR (--node I ... | --all) KIND [params] [--duration S]
    medchain fault clear   --dir DIR [--node I ...] [--id N]
    medchain fault list    --dir DIR [--node I ...]
    medchain fault kill|stop|cont|restart|wipe --dir DIR --node I

``apply``/``clear``/``list`` talk to the nodes' fault layers through the operator-signed admin
API (node/faults/admin.py), signing with ``DIR/keys/operator.key``; the nodes must run with
``[faults] enabled = true``. Process faults go through the launcher (scripts/cluster.py):
kill = SIGKILL, stop = SIGSTOP, cont = SIGCONT, restart = graceful stop then start, wipe = kill,
erase the node's data, start it again empty (unless ``--keep-down``) so that it rejoins by state
transfer.

:class:`AdminClient` is shared with the scenario runner (scripts/scenario.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import aiohttp
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from node.crypto import KeyFileError, load_key
from node.faults import (
    ACTION_CLEAR,
    ACTION_FAULT,
    ACTION_LIST,
    FAULT_KINDS,
    ByzantineMode,
    Direction,
    FaultError,
    parse_fault,
    sign_admin_request,
)
from scripts.client import read_bounded
from scripts.cluster import (
    DEFAULT_CLUSTER_DIR,
    STARTUP_TIMEOUT_S,
    ClusterError,
    ClusterLayout,
    ClusterProcesses,
)
from scripts.credentials import client_session

ADMIN_TIMEOUT_S: Final = 5.0
MAX_RESPONSE_BYTES: Final = 1 << 20
PROCESS_ACTIONS: Final = ("kill", "stop", "cont", "restart", "wipe")

stdout = Console(highlight=False, soft_wrap=True)
stderr = Console(stderr=True, highlight=False)


class FaultCtlError(RuntimeError):
    """An error for the user: printed without a traceback, exit status 1."""


class AdminRequestError(FaultCtlError):
    def __init__(self, node: int, status: int | None, message: str) -> None:
        where = f"node {node}" + (f": HTTP {status}" if status is not None else "")
        super().__init__(f"{where}: {message}")
        self.node = node
        self.status = status


# =============================================================================================
# the admin client


class AdminClient:
    """Signed requests to nodes' /admin endpoints over one aiohttp session."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        operator_secret: bytes,
        *,
        timeout_s: float = ADMIN_TIMEOUT_S,
    ) -> None:
        self._session = session
        self._secret = operator_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def apply(self, node: int, url: str, fault: Mapping[str, Any]) -> dict[str, Any]:
        return await self._call(node, url, ACTION_FAULT, {"fault": dict(fault)})

    async def clear(self, node: int, url: str, fault_id: int | None = None) -> dict[str, Any]:
        return await self._call(
            node, url, ACTION_CLEAR, {} if fault_id is None else {"id": fault_id}
        )

    async def list(self, node: int, url: str) -> dict[str, Any]:
        return await self._call(node, url, ACTION_LIST, {})

    async def _call(
        self, node: int, url: str, action: str, params: Mapping[str, Any]
    ) -> dict[str, Any]:
        fields, headers = sign_admin_request(self._secret, action, node, params)
        base = url.rstrip("/")
        try:
            if action == ACTION_LIST:
                query = {k: str(v) for k, v in fields.items()}
                req = self._session.get(
                    f"{base}/admin/faults", params=query, headers=headers, timeout=self._timeout
                )
            else:
                req = self._session.post(
                    f"{base}/admin/{action}", json=fields, headers=headers, timeout=self._timeout
                )
            async with req as resp:
                raw = await read_bounded(resp, MAX_RESPONSE_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            reason = str(e) or type(e).__name__
            raise AdminRequestError(node, None, f"cannot reach {base}: {reason}") from e
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            body = None
        if not 200 <= status < 300 or not isinstance(body, dict):
            if isinstance(body, dict) and "error" in body:
                detail = body.get("detail")
                message = str(body["error"]) + (f": {detail}" if detail else "")
            else:
                message = raw[:200].decode("utf-8", "replace") or "empty response"
            raise AdminRequestError(node, status, message)
        return body


def load_operator_key(root: Path) -> bytes:
    """The operator's secret key of the cluster in ``root`` (written by ``medchain init``)."""
    path = ClusterLayout(root).operator_key
    try:
        secret, _public = load_key(path)
    except KeyFileError as e:
        raise FaultCtlError(f"cannot load the operator key: {e}") from e
    return secret


def node_urls(root: Path) -> dict[int, str]:
    procs = ClusterProcesses(root)
    specs = procs.specs()
    if not specs:
        raise FaultCtlError(f"{procs.root}: no cluster here (run `medchain cluster up` first)")
    return {s.index: s.url for s in specs}


def _targets(urls: Mapping[int, str], nodes: Sequence[int] | None) -> dict[int, str]:
    if not nodes:
        return dict(urls)
    unknown = sorted(set(nodes) - set(urls))
    if unknown:
        raise FaultCtlError(f"no node {unknown[0]} in this cluster (nodes: {sorted(urls)})")
    return {i: urls[i] for i in sorted(set(nodes))}


# =============================================================================================
# building a fault from the command line


def fault_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The fault object for ``apply``; validated here with the same parser the node uses."""
    fault: dict[str, Any] = {"kind": args.kind}
    for name in ("probability", "ms", "jitter_ms", "window_ms", "direction", "mode", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            fault[name] = value
    if args.duration is not None:
        fault["duration_s"] = args.duration
    if args.peers is not None:
        fault["peers"] = _id_csv(args.peers, "--peers")
    if args.group:
        fault["groups"] = [_id_csv(g, "--group") for g in args.group]
    try:
        parse_fault(fault)
    except FaultError as e:
        flag = "--" + e.field.split("[")[0].replace("_", "-")
        raise FaultCtlError(f"bad {args.kind} fault ({flag}): {e.problem}") from None
    return fault


def _id_csv(text: str, flag: str) -> list[int]:
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise FaultCtlError(f"{flag} takes comma-separated node ids, got {text!r}") from None
    if not ids:
        raise FaultCtlError(f"{flag} must name at least one node")
    return ids


# =============================================================================================
# commands


async def _fan_out(
    root: Path,
    nodes: Sequence[int] | None,
    action: str,
    fault: Mapping[str, Any] | None = None,
    fault_id: int | None = None,
) -> list[dict[str, Any]]:
    """Send one admin action to every target node concurrently; one result row per node."""
    targets = _targets(node_urls(root), nodes)
    secret = load_operator_key(root)
    async with client_session() as session:
        client = AdminClient(session, secret)

        async def one(i: int, url: str) -> dict[str, Any]:
            try:
                if action == ACTION_FAULT:
                    assert fault is not None
                    body = await client.apply(i, url, fault)
                elif action == ACTION_CLEAR:
                    body = await client.clear(i, url, fault_id)
                else:
                    body = await client.list(i, url)
            except AdminRequestError as e:
                return {"node": i, "ok": False, "error": str(e)}
            return {"node": i, "ok": True, **{k: v for k, v in body.items() if k != "node"}}

        return list(await asyncio.gather(*(one(i, url) for i, url in targets.items())))


def cmd_apply(args: argparse.Namespace) -> int:
    fault = fault_from_args(args)
    nodes = None if args.all else args.node
    rows = asyncio.run(_fan_out(args.dir, nodes, ACTION_FAULT, fault=fault))
    if _json(args):
        _print_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                applied = r["applied"]
                stdout.print(
                    f"node {r['node']}: fault {applied['id']} applied: {_describe(applied)}"
                )
            else:
                stderr.print(f"[red]{escape(r['error'])}[/]")
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_clear(args: argparse.Namespace) -> int:
    rows = asyncio.run(_fan_out(args.dir, args.node, ACTION_CLEAR, fault_id=args.id))
    if _json(args):
        _print_json(rows)
    else:
        for r in rows:
            if r["ok"]:
                stdout.print(f"node {r['node']}: cleared {r['cleared'] or 'nothing'}")
            else:
                stderr.print(f"[red]{escape(r['error'])}[/]")
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_list(args: argparse.Namespace) -> int:
    rows = asyncio.run(_fan_out(args.dir, args.node, ACTION_LIST))
    if _json(args):
        _print_json(rows)
        return 0 if all(r["ok"] for r in rows) else 1
    table = Table(title=f"faults: {ClusterLayout(args.dir).root}")
    for col in ("node", "id", "fault", "remaining"):
        table.add_column(col)
    for r in rows:
        if not r["ok"]:
            table.add_row(str(r["node"]), "-", f"[red]{escape(r['error'])}[/]", "-")
            continue
        if not r.get("active"):
            table.add_row(str(r["node"]), "-", "(none)", "-")
        for a in r.get("active", []):
            remaining = "until cleared" if a["remaining_s"] is None else f"{a['remaining_s']:.1f}s"
            table.add_row(str(r["node"]), str(a["id"]), _describe(a), remaining)
    stdout.print(table)
    return 0 if all(r["ok"] for r in rows) else 1


def cmd_process(args: argparse.Namespace) -> int:
    procs = ClusterProcesses(args.dir)
    i = args.node
    if i not in procs.indices():
        raise FaultCtlError(f"no node {i} in {procs.root} (nodes: {procs.indices()})")
    action: str = args.fault_cmd
    result: dict[str, Any] = {"node": i, "action": action}
    if action == "kill":
        result["pid"] = procs.kill(i, signal.SIGKILL)
    elif action == "stop":
        result["pid"] = procs.kill(i, signal.SIGSTOP)
    elif action == "cont":
        result["pid"] = procs.kill(i, signal.SIGCONT)
    elif action == "restart":
        result["pid"] = procs.restart(i, timeout=args.timeout)
    else:
        wipe_node(procs, i, start=not args.keep_down, timeout=args.timeout)
        result["restarted"] = not args.keep_down
    if _json(args):
        _print_json(result)
    else:
        stdout.print(
            f"node {i}: {action} done" + (f" (pid {result['pid']})" if "pid" in result else "")
        )
    return 0


def wipe_node(
    procs: ClusterProcesses, i: int, *, start: bool, timeout: float = STARTUP_TIMEOUT_S
) -> None:
    """Crash node i (SIGKILL), erase its data, and start it again empty if ``start``."""
    if procs.is_alive(i):
        procs.kill(i, signal.SIGKILL)
    procs.wipe(i)
    if start:
        procs.start(i)
        procs.wait_ready([i], timeout=timeout)


def _describe(fault: Mapping[str, Any]) -> str:
    skip = {"id", "kind", "age_s", "remaining_s"}
    params = ", ".join(f"{k}={v}" for k, v in fault.items() if k not in skip and v is not None)
    return f"{fault.get('kind')}({params})"


# =============================================================================================
# argument parsing


def _json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dir", type=Path, default=DEFAULT_CLUSTER_DIR, help="cluster directory (%(default)s)"
    )
    # SUPPRESS: never overwrite a --json the parent parser may already have set.
    p.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")


def add_fault_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``fault`` and its actions to a ``medchain`` subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "fault",
        help="inject faults into a running local cluster",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="fault_cmd", required=True, metavar="ACTION")

    ap = sub.add_parser("apply", help="apply a fault on nodes' fault layers (signed admin API)")
    _common(ap)
    target = ap.add_mutually_exclusive_group(required=True)
    target.add_argument("--node", type=int, action="append", help="target node (repeatable)")
    target.add_argument("--all", action="store_true", help="every node of the cluster")
    ap.add_argument("kind", choices=FAULT_KINDS, help="the fault")
    ap.add_argument("--duration", type=float, help="seconds until the fault clears itself")
    ap.add_argument("--probability", type=float, help="drop/duplicate/reorder: 0..1")
    ap.add_argument("--ms", type=float, help="delay: milliseconds")
    ap.add_argument("--jitter-ms", dest="jitter_ms", type=float, help="delay: +- milliseconds")
    ap.add_argument("--window-ms", dest="window_ms", type=float, help="reorder: hold-back window")
    ap.add_argument("--peers", help="only frames to (or from) these nodes, e.g. 1,2")
    ap.add_argument("--direction", choices=[d.value for d in Direction], help="drop: out|in|both")
    ap.add_argument(
        "--group",
        action="append",
        help="partition: one group of node ids, e.g. --group 0 "
        "--group 1,2,3 (nodes in no group form one more group)",
    )
    ap.add_argument("--mode", choices=[m.value for m in ByzantineMode], help="byzantine mode")
    ap.add_argument("--seed", type=int, help="seed of the fault's random choices")
    ap.set_defaults(fault_handler=cmd_apply)

    cp = sub.add_parser("clear", help="clear faults (all, or one by --id)")
    _common(cp)
    cp.add_argument("--node", type=int, action="append", help="target node (default: all)")
    cp.add_argument("--id", type=int, help="clear only this fault id")
    cp.set_defaults(fault_handler=cmd_clear)

    lp = sub.add_parser("list", help="list the active faults and counters")
    _common(lp)
    lp.add_argument("--node", type=int, action="append", help="target node (default: all)")
    lp.set_defaults(fault_handler=cmd_list)

    helps = {
        "kill": "SIGKILL the node (a crash)",
        "stop": "SIGSTOP the node (frozen: alive but silent)",
        "cont": "SIGCONT a stopped node",
        "restart": "stop the node gracefully and start it again",
        "wipe": "kill the node, erase its data, start it again empty (state transfer)",
    }
    for action in PROCESS_ACTIONS:
        pp = sub.add_parser(action, help=helps[action])
        _common(pp)
        pp.add_argument("--node", type=int, required=True, help="the node")
        pp.add_argument(
            "--timeout", type=float, default=STARTUP_TIMEOUT_S, help="startup wait (%(default)ss)"
        )
        if action == "wipe":
            pp.add_argument("--keep-down", action="store_true", help="do not start it again")
        pp.set_defaults(fault_handler=cmd_process)
    p.set_defaults(func=main_fault)
    return p


def main_fault(args: argparse.Namespace) -> int:
    """Run a parsed ``medchain fault ...`` command; returns the exit status."""
    try:
        status: int = args.fault_handler(args)
        return status
    except (FaultCtlError, ClusterError, FaultError) as e:
        stderr.print(f"medchain: error: {e}", markup=False)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="medchain")
    add_fault_parser(parser.add_subparsers(dest="command", required=True))
    return main_fault(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
