"""``python -m node.main --config FILE [--full-verify] [--wipe]``: the entry point of a node.

Loads the config, sets up logging and the event loop, and runs the node until SIGTERM/SIGINT
(config -> ``Node.run``). It imports only the node itself: no operator tooling, so a node
process never loads rich, psutil or matplotlib. The launcher (scripts/cluster.py) starts
nodes this way and recognises them by this module's name on their command line.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from node.config import ConfigError, NodeConfig, load_config
from node.crypto import KeyFileError
from node.logfmt import LOG_FORMATS, setup_logging
from node.runtime import Node
from node.store import StoreError

log = logging.getLogger("medchain.node")


async def serve(config: NodeConfig, *, full_verify: bool = False, wipe: bool = False) -> int:
    """Run a node until SIGTERM/SIGINT; returns the process exit status."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop: %s.%s", type(loop).__module__, type(loop).__name__)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await Node(config, full_verify=full_verify, wipe=wipe).run(stop)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def run_node(
    config_path: str | os.PathLike[str],
    *,
    full_verify: bool = False,
    log_format: str = "text",
    wipe: bool = False,
) -> int:
    """``medchain node --config FILE``: load the config, run the node, return the exit status.

    Raises ConfigError / KeyFileError / ValueError / StoreError (for the CLI to report) if the
    node cannot start: bad config, unreadable key, key not matching the config, a store it
    must not start on (a node that voted, on an empty or damaged store, without ``wipe``).
    """
    # Everything the node creates (store, WAL, audit db, evidence, markers) is 0600 in 0700
    # directories: patient data and what the node signed are nobody else's to read.
    os.umask(0o077)
    config = load_config(Path(config_path))
    setup_logging(config.node_id, config.log_level, log_format)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(serve(config, full_verify=full_verify, wipe=wipe))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed (libuv's loop: cheaper sockets and timers for aiohttp under
    load); the standard loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m node.main",
        description="Run one medchain node in the foreground until SIGINT/SIGTERM.",
    )
    parser.add_argument("--config", type=Path, required=True, help="the node's TOML config")
    parser.add_argument(
        "--full-verify",
        action="store_true",
        help="re-verify every stored block on start (default: links of all, the newest fully)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line with node, view and seq",
    )
    parser.add_argument(
        "--wipe",
        action="store_true",
        help="erase this node's data directory and rejoin by state transfer (needed to start a "
        "node that voted before on an empty or damaged store)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run_node(
            args.config, full_verify=args.full_verify, log_format=args.log_format, wipe=args.wipe
        )
    except (ConfigError, KeyFileError, ValueError, StoreError) as exc:
        sys.stderr.write(f"medchain: error: cannot start node from {args.config}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("medchain: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
