"""The ``medchain audit`` command: its argparse table and the two modes it runs."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.argtypes import non_negative_int, positive_float, positive_int
from scripts.audit.compare import compare, verdict
from scripts.audit.evidence import check_records, load_records
from scripts.audit.gather import gather_all
from scripts.audit.report import audit_json, print_evidence_results, print_table, print_verdict
from scripts.audit.targets import cluster_targets, config_keys, url_targets
from scripts.client import Consortium
from scripts.cluster import DEFAULT_CLUSTER_DIR
from scripts.output import CliError, print_json

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_LAG_TOLERANCE = 2


def add_audit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``audit`` to a ``medchain`` subparsers object; its ``func`` is :func:`main_audit`."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "audit",
        help="compare every node's chain: agreement, certificates, lag, evidence",
        description="Show every node of a cluster side by side: height, head hash, agreement "
        "up to the common height, certificate validity, lag, evidence and repairs. Exit "
        "status 1 on any divergence or failed verification. With --check-evidence, verify "
        "evidence records offline instead.",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--dir",
        type=Path,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR}); nodes that do not answer "
        "are audited offline from their stores",
    )
    src.add_argument("--nodes", metavar="URL,URL,...", help="audit these nodes over HTTP")
    p.add_argument(
        "--config",
        type=Path,
        help="node config holding the consortium's keys (default: the cluster's node config; "
        "with --nodes, the keys the first node publishes in GET /status)",
    )
    p.add_argument(
        "--last", type=positive_int, help="compare only the last N common heights (default: all)"
    )
    p.add_argument(
        "--lag-tolerance",
        type=non_negative_int,
        default=DEFAULT_LAG_TOLERANCE,
        help=f"blocks behind the highest node still counted as agreeing (default "
        f"{DEFAULT_LAG_TOLERANCE})",
    )
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds per HTTP request (default {DEFAULT_TIMEOUT_S:.0f})",
    )
    p.add_argument(
        "--check-evidence",
        type=Path,
        metavar="FILE",
        help="verify the evidence records in FILE (from GET /audit/evidence) and exit",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=main_audit)
    return p


def main_audit(args: argparse.Namespace) -> int:
    """Run ``medchain audit``; returns the exit status (errors printed to stderr, status 1)."""
    try:
        if args.check_evidence is not None:
            return _check_evidence(args)
        return _run_audit(args)
    except CliError as e:
        sys.stderr.write(f"medchain: error: {e}\n")
        return 1


def _run_audit(args: argparse.Namespace) -> int:
    keys: Consortium | None = None
    if args.nodes:
        targets = url_targets(args.nodes)
    else:
        targets, keys = cluster_targets(args.dir or DEFAULT_CLUSTER_DIR)
    if args.config:
        keys = config_keys(args.config)
    views, keys, start = asyncio.run(
        gather_all(targets, keys, last=args.last, timeout_s=args.timeout)
    )
    divergences = compare(views, start, args.lag_tolerance)
    ok, common = verdict(views, divergences)
    if args.json:
        print_json(audit_json(views, divergences, keys, start, ok=ok, common=common))
    else:
        print_table(views, keys, start)
        print_verdict(views, divergences, ok)
    return 0 if ok else 1


def _check_evidence(args: argparse.Namespace) -> int:
    if args.config:
        keys = config_keys(args.config)
    elif args.nodes:
        raise CliError("--check-evidence needs the keys: --config FILE or --dir DIR")
    else:
        _, keys = cluster_targets(args.dir or DEFAULT_CLUSTER_DIR)
    results = check_records(load_records(args.check_evidence), keys)
    ok = all(r["ok"] for r in results)
    if args.json:
        print_json({"ok": ok, "keys": keys.source, "records": results})
    else:
        print_evidence_results(results)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m scripts.audit ...`` (the same as ``medchain audit ...``)."""
    parser = argparse.ArgumentParser(prog="medchain")
    add_audit_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))
