"""``make demo``: a four-hospital consortium on this machine, from nothing to a verified chain.

Starts a cluster in a temporary directory, has every hospital submit signed patient records
through its own node, waits until all are committed, shows that every node holds the same chain
(height and head hash), verifies every node's chain against the consortium's keys, and stops the
cluster. The cluster is always stopped, on success, failure, Ctrl-C or SIGTERM; on failure its
directory (logs included) is kept for inspection.

    python -m scripts.demo [--nodes N] [--records K] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from node.config import load_config
from node.crypto import load_key
from scripts.cli import cluster_status
from scripts.cluster import ClusterError, ClusterProcesses, hospital_id
from scripts.output import CliError
from scripts.provision import init_cluster
from scripts.submit import SubmitTarget, submit_records, synthetic_records
from scripts.verify import consortium_from_config, verify_node

CONVERGE_TIMEOUT_S = 60.0
SUBMIT_TIMEOUT_S = 120.0

console = Console(highlight=False)


class DemoFailed(RuntimeError):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so the cluster is stopped.
    raise KeyboardInterrupt


def submit_all(procs: ClusterProcesses, records: int) -> int:
    """Each hospital submits its share through its own node; returns the highest height."""
    specs = procs.specs()
    layout = procs.layout
    n = len(specs)
    share = [records // n + (1 if i < records % n else 0) for i in range(n)]
    targets = [
        SubmitTarget(
            url=spec.url,
            client_secret=load_key(layout.client_key(hospital_id(spec.index)))[0],
            hospital=hospital_id(spec.index),
        )
        for spec in specs
    ]
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        sent = bar.add_task("signed and submitted", total=records)
        committed = bar.add_task("committed", total=records)
        tasks = {"sent": sent, "committed": committed}

        async def run() -> list[int]:
            results = await asyncio.gather(
                *(
                    submit_records(
                        target,
                        list(synthetic_records(count)),
                        wait=True,
                        timeout=SUBMIT_TIMEOUT_S,
                        on_progress=lambda phase, n: bar.advance(tasks[phase], n),
                    )
                    for target, count in zip(targets, share, strict=True)
                    if count
                )
            )
            return [r.height for receipts in results for r in receipts if r.height is not None]

        heights = asyncio.run(run())
    return max(heights)


def wait_converged(root: Path, min_height: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + CONVERGE_TIMEOUT_S
    rows = cluster_status(root)
    while time.monotonic() < deadline:
        rows = cluster_status(root)
        heads = {(r["height"], r["head_hash"]) for r in rows}
        height = rows[0]["height"]
        if len(heads) == 1 and isinstance(height, int) and height >= min_height:
            return rows
        time.sleep(0.2)
    raise DemoFailed(f"nodes did not agree on a chain within {CONVERGE_TIMEOUT_S:.0f}s")


def show_agreement(rows: list[dict[str, object]]) -> None:
    table = Table(title="every node holds the same chain")
    for col in ("node", "hospital", "view", "primary", "height", "head hash"):
        table.add_column(col, justify="right" if col in ("node", "view", "height") else "left")
    for r in rows:
        table.add_row(
            str(r["id"]),
            hospital_id(int(str(r["id"]))),
            str(r["view"]),
            str(r["primary"]),
            str(r["height"]),
            str(r["head_hash"])[:24] + "…",
        )
    console.print(table)


def verify_every_node(procs: ClusterProcesses) -> None:
    table = Table(title="medchain verify, per node")
    table.add_column("node", justify="right")
    table.add_column("blocks", justify="right")
    table.add_column("hash links, Merkle roots, tx signatures, commit certificates")
    failed = []
    for spec in procs.specs():
        config = load_config(spec.config_path)
        keys = consortium_from_config(config, str(spec.config_path))
        result = asyncio.run(verify_node(spec.url, keys))
        verdict = "[green]valid[/]" if result.ok else f"[red]block {result.first_bad_height}: "
        if not result.ok:
            verdict += f"{result.reason}[/]"
            failed.append(spec.index)
        table.add_row(str(spec.index), str(result.height), verdict)
    console.print(table)
    if failed:
        raise DemoFailed(f"chain verification failed on nodes {failed}")


def run(procs: ClusterProcesses, nodes: int, records: int) -> None:
    root = procs.root
    console.rule("[bold]medchain demo")
    init_cluster(root, nodes)
    with console.status(f"starting {nodes} nodes (logs in {root / 'logs'})"):
        procs.up()
    console.print(f"{nodes} hospital nodes up (f = {(nodes - 1) // 3}) in {root}")
    top = submit_all(procs, records)
    rows = wait_converged(root, top)
    show_agreement(rows)
    verify_every_node(procs)
    console.print(
        f"[bold green]{records} records committed; {nodes} nodes agree on height "
        f"{rows[0]['height']}, head {str(rows[0]['head_hash'])[:16]}…; every chain verifies."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.demo", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--nodes", type=int, default=4, help="hospital nodes (default 4)")
    parser.add_argument("--records", type=int, default=300, help="records to commit (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the cluster directory")
    args = parser.parse_args(argv)
    if args.nodes < 4 or args.records < 1:
        parser.error("need --nodes >= 4 and --records >= 1")

    root = Path(tempfile.mkdtemp(prefix="medchain-demo-"))
    procs = ClusterProcesses(root)
    signal.signal(signal.SIGTERM, _on_sigterm)
    ok = False
    try:
        run(procs, args.nodes, args.records)
        ok = True
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
    except (DemoFailed, CliError, ClusterError) as exc:
        console.print(f"[red]demo failed:[/] {exc}", markup=True)
    finally:
        with console.status("stopping the cluster"):
            stopped = procs.down()
        console.print(f"cluster stopped ({len(stopped)} node processes)")
        if ok and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            console.print(f"cluster directory kept: {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
