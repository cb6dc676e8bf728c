"""The benchmark's load generator: pre-signed transactions, submitted from a process of its own,
with commits observed by polling one node.

``medchain bench`` runs :func:`loadgen_main` in a child process (multiprocessing, spawn) and
talks to it over a pipe::

    child  -> parent   ("signing", done, total)      while the pool is being signed
    child  -> parent   ("ready", pool_size)          everything is signed; waiting for "go"
    parent -> child    ("go",)                       start the clock (second 0 of the run)
    child  -> parent   ("tick", LiveStats)           once a second while the load runs
    parent -> child    ("stop",)                     end early (Ctrl-C): partial results follow
    child  -> parent   ("result", LoadResult)        raw per-transaction and per-block records
    child  -> parent   ("error", message)            the generator could not run

Every transaction is signed *before* the clock starts (``make_transaction``) and the request
bodies are prebuilt, so client-side signing and encoding never limit what is measured.

What "committed" means here, precisely: a block counts as committed at the moment the observer
receives the first ``GET /status`` answer of the observed node whose ``height`` includes it
(``GET /status`` is polled at a fixed interval, ``poll_ms``; which transactions each block holds
is then read on the side with ``GET /blocks?txs=ids``, headers and tx ids only, so neither the
blocks' size nor their decoding delays the next poll or loads the observed node). A
transaction's commit time is its block's. The observation therefore lags the node's real commit
by at most one poll interval plus one ``/status`` round trip (on average about half an
interval), and that is the resolution of every latency the bench reports.

Latency origin: in closed loop, the moment the request carrying the transaction was first
sent; in open loop, the moment it was *scheduled* to be sent, so that time spent waiting for a
free request slot when the cluster falls behind is counted (no coordinated omission).

All times are ``time.monotonic_ns()``: on Linux and macOS one system-wide clock, so the parent
can place its CPU samples on the same axis.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Final

from scripts.bench.loadrun import LoadRun
from scripts.bench.loadspec import LoadResult, LoadSpec
from scripts.bench.pool import Pool, build_pool

GO_TIMEOUT_S: Final = 600.0
"""How long a signed pool waits for the parent's "go" before giving up."""


def loadgen_main(spec: LoadSpec, conn: Connection) -> None:
    """Child-process entry: sign, wait for "go", run, send the result (or an error)."""
    # Ctrl-C reaches the whole foreground process group; the parent decides what happens,
    # and tells us with "stop".
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool = build_pool(spec, lambda done, total: conn.send(("signing", done, total)))
        conn.send(("ready", pool.txs))
        if not conn.poll(GO_TIMEOUT_S):
            return
        message = conn.recv()
        if message != ("go",):
            return
        result = asyncio.run(_run_with_control(spec, pool, conn))
        conn.send(("result", result))
    except (EOFError, BrokenPipeError):
        return  # the parent is gone
    except Exception as e:
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"))
    finally:
        conn.close()


async def _run_with_control(spec: LoadSpec, pool: Pool, conn: Connection) -> LoadResult:
    run = LoadRun(spec, pool, lambda live: conn.send(("tick", live)))
    loop = asyncio.get_running_loop()

    def on_message() -> None:
        try:
            message = conn.recv() if conn.poll() else None
        except (EOFError, OSError):
            message = ("stop",)  # the parent is gone
        if message == ("stop",):
            loop.remove_reader(conn.fileno())
            run.stop()

    loop.add_reader(conn.fileno(), on_message)
    try:
        return await run.run()
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(conn.fileno())
