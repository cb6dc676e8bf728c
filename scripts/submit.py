"""``medchain submit``: sign patient records as a hospital and commit them through a node.

Records become signed transactions (``node.ledger.make_transaction``) with the hospital's
client key, go to the node in msgpack batches through :class:`scripts.client.NodeClient`
(retried on 503 and connection errors) and, with ``--wait``, are followed until committed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from node import ledger
from node.crypto import KeyFileError, load_key
from scripts.argtypes import positive_float
from scripts.client import DEFAULT_TIMEOUT_S, NodeClient, NodeError, RetryPolicy
from scripts.cluster import DEFAULT_CLUSTER_DIR, ClusterLayout, hospital_id
from scripts.output import CliError, print_json, stderr, stdout
from scripts.provision import load_node_config

SUBMIT_BATCH = 200
"""Transactions per POST /tx (the node accepts up to NodeLimits.max_batch_request_txs)."""
SUBMIT_TIMEOUT_S = 120.0
SUBMIT_RETRY = RetryPolicy()
WAIT_CONCURRENCY = 32
MAX_DATA_BYTES = 1 << 20
_RECORD_TYPES = ("observation", "lab-result", "prescription", "imaging-report", "discharge-note")


@dataclass(frozen=True, slots=True)
class Record:
    """One patient record to put on chain (the payload is what the tx's hash covers)."""

    patient: str
    record_type: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Receipt:
    tx_id: str
    height: int | None
    """Committed height, or None when the caller did not wait."""
    node: str


@dataclass(frozen=True, slots=True)
class SubmitTarget:
    url: str
    client_secret: bytes
    hospital: str
    others: tuple[str, ...] = ()
    """The other nodes of the cluster (with --dir): the client fails over to them when
    ``url`` stops answering (scripts.client.NodeClient)."""


def synthetic_records(
    count: int, *, patient: str | None = None, record_type: str | None = None, run: str = ""
) -> Iterator[Record]:
    """``count`` plausible records for load and demos: pseudonymous patients, rotating types,
    a small JSON payload. ``run`` tags payloads so two runs never look alike."""
    run = run or os.urandom(4).hex()
    for k in range(count):
        body = {"run": run, "seq": k, "value": round(36.0 + (k % 30) / 10, 1), "unit": "C"}
        yield Record(
            patient=patient or f"patient-{k % 97:04d}",
            record_type=record_type or _RECORD_TYPES[k % len(_RECORD_TYPES)],
            payload=json.dumps(body, separators=(",", ":")).encode(),
        )


def read_data_arg(text: str) -> bytes:
    """``--data``: literal text, or ``@FILE`` for a file's bytes (bounded)."""
    if not text.startswith("@"):
        return text.encode()
    path = Path(text[1:])
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise CliError(f"--data file {path} is {size} bytes, limit {MAX_DATA_BYTES}")
        return path.read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read --data file {path}: {exc.strerror}") from exc


def build_envelopes(target: SubmitTarget, records: Sequence[Record]) -> list[ledger.TxEnvelope]:
    try:
        return [
            ledger.make_transaction(
                target.client_secret, target.hospital, r.patient, r.record_type, r.payload
            )
            for r in records
        ]
    except ledger.LedgerError as exc:
        raise CliError(f"invalid record: {exc.reason}") from exc


async def submit_records(
    target: SubmitTarget,
    records: Sequence[Record],
    *,
    wait: bool,
    timeout: float = SUBMIT_TIMEOUT_S,
    batch_size: int = SUBMIT_BATCH,
    on_progress: Callable[[str, int], None] | None = None,
) -> list[Receipt]:
    """Sign ``records`` as ``target.hospital``, POST them in batches and, with ``wait``, wait
    until each is committed. ``on_progress(phase, n)`` reports n more txs "sent"/"committed"."""
    envs = build_envelopes(target, records)
    deadline = time.monotonic() + timeout
    progress = on_progress or (lambda phase, n: None)
    heights: list[int | None] = [None] * len(envs)
    client = NodeClient(
        [target.url, *target.others],
        retry=SUBMIT_RETRY,
        timeout_s=min(timeout, DEFAULT_TIMEOUT_S),
        connections=WAIT_CONCURRENCY,
    )
    try:
        async with client:
            for start in range(0, len(envs), batch_size):
                chunk = envs[start : start + batch_size]
                await client.submit(chunk, deadline=deadline)
                progress("sent", len(chunk))
            if wait:
                gate = asyncio.Semaphore(WAIT_CONCURRENCY)

                async def wait_one(i: int) -> None:
                    async with gate:
                        heights[i] = await client.wait_committed(envs[i], deadline=deadline)
                    progress("committed", 1)

                await asyncio.gather(*(wait_one(i) for i in range(len(envs))))
    except NodeError as exc:
        raise CliError(str(exc)) from exc
    return [
        Receipt(tx_id=env.tx_id.hex(), height=heights[i], node=target.url)
        for i, env in enumerate(envs)
    ]


def submit_target(args: argparse.Namespace) -> SubmitTarget:
    if args.node:
        if not args.key:
            raise CliError("--node needs --key (the hospital client's key file)")
        url, key_path, hospital = args.node.rstrip("/"), Path(args.key), args.hospital
        others: tuple[str, ...] = ()
    else:
        layout = ClusterLayout(args.dir)
        indices = layout.node_indices()
        if not indices:
            raise CliError(f"{layout.root}: no cluster here (run `medchain cluster up` first)")
        if args.node_index not in indices:
            raise CliError(f"no node {args.node_index} in {layout.root} (nodes: {indices})")
        url = load_node_config(layout.config_path(args.node_index)).self_url
        others = tuple(
            load_node_config(layout.config_path(i)).self_url
            for i in indices
            if i != args.node_index
        )
        key_path = Path(args.key) if args.key else layout.client_key(args.hospital)
        hospital = args.hospital
    try:
        secret, _public = load_key(key_path)
    except KeyFileError as exc:
        raise CliError(str(exc)) from exc
    return SubmitTarget(url=url, client_secret=secret, hospital=hospital, others=others)


def _records(args: argparse.Namespace) -> list[Record]:
    if args.count is not None:
        if args.count < 1:
            raise CliError("--count must be at least 1")
        return list(synthetic_records(args.count, patient=args.patient, record_type=args.type))
    if not (args.patient and args.type and args.data is not None):
        raise CliError("give --patient, --type and --data for one record, or --count K")
    return [Record(args.patient, args.type, read_data_arg(args.data))]


def cmd_submit(args: argparse.Namespace) -> int:
    target = submit_target(args)
    records = _records(args)
    if args.json:
        receipts = asyncio.run(
            submit_records(target, records, wait=args.wait, timeout=args.timeout)
        )
        print_json([{"tx_id": r.tx_id, "height": r.height, "node": r.node} for r in receipts])
        return 0
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as bar:
        tasks = {"sent": bar.add_task("submitted", total=len(records))}
        if args.wait:
            tasks["committed"] = bar.add_task("committed", total=len(records))
        receipts = asyncio.run(
            submit_records(
                target,
                records,
                wait=args.wait,
                timeout=args.timeout,
                on_progress=lambda phase, n: bar.advance(tasks[phase], n),
            )
        )
    heights = [r.height for r in receipts if r.height is not None]
    where = f" at heights {min(heights)}..{max(heights)}" if heights else ""
    state = "committed" if args.wait else "submitted"
    stdout.print(f"{len(receipts)} record(s) {state} via {target.url}{where}")
    if len(receipts) == 1:
        stdout.print(f"tx_id {receipts[0].tx_id}")
    return 0


def add_submit_parser(sub: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="sign patient records as a hospital and submit them",
        description="Build signed transactions with the hospital client key and POST them "
        "(msgpack, in batches; 503 and connection errors are retried with backoff). Either one "
        "record (--patient, --type, --data) or --count K synthetic ones.",
    )
    target = p.add_argument_group("target (a local cluster, or any node)")
    target.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_CLUSTER_DIR,
        help=f"cluster directory (default: {DEFAULT_CLUSTER_DIR})",
    )
    target.add_argument(
        "--node-index", type=int, default=0, help="with --dir: node to send to (default 0)"
    )
    target.add_argument("--node", metavar="URL", help="a node's base URL (needs --key)")
    target.add_argument(
        "--key",
        type=Path,
        help="hospital client key file (default with --dir: DIR/keys/client-HOSPITAL.key)",
    )
    target.add_argument(
        "--hospital", default=hospital_id(0), help="submitting hospital (default hospital-0)"
    )
    what = p.add_argument_group("records")
    what.add_argument("--patient", help="pseudonymous patient id (default for --count: varied)")
    what.add_argument("--type", help="record type, e.g. lab-result (default for --count: varied)")
    data = what.add_mutually_exclusive_group()
    data.add_argument("--data", help="record payload: TEXT, or @FILE for a file's bytes")
    data.add_argument("--count", type=int, help="submit K synthetic records")
    p.add_argument("--wait", action="store_true", help="wait until every record is committed")
    p.add_argument(
        "--timeout",
        type=positive_float,
        default=SUBMIT_TIMEOUT_S,
        help=f"overall bound in seconds (default {SUBMIT_TIMEOUT_S:.0f})",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON on stdout")
    p.set_defaults(func=cmd_submit)
