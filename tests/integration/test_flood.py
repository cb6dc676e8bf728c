"""A flood: several processes send garbage, oversize, slow and valid traffic to one node of a
real 4-node cluster at once, for a bounded time. The cluster keeps committing (valid records
sent to the flooded node itself commit), the flooded node stays up and healthy, and its
resident memory stays under RSS_BOUND_MIB the whole time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

from scripts.cluster import fetch_status
from tests.integration.conftest import Cluster, run_cli_json

FLOOD_S = 20.0
RSS_BOUND_MIB = 400
"""The flooded node's resident memory bound (an idle node is ~70 MiB, at bench peak ~150)."""
SLOW_CONNECTIONS = 200


def _connect(addr: tuple[str, int]) -> socket.socket | None:
    try:
        return socket.create_connection(addr, timeout=2.0)
    except OSError:
        return None


def _garbage(addr: tuple[str, int], until: float, seed: int) -> None:
    """Random bytes, random HTTP-looking junk, hostile paths and headers, bad peer bodies."""
    rng = random.Random(seed)
    paths = ["/blocks/\u00b2", "/tx/" + "\u0661" * 64, "/blocks?from=" + "9" * 5000, "/admin/fault"]
    while time.monotonic() < until:
        s = _connect(addr)
        if s is None:
            continue
        try:
            kind = rng.randrange(4)
            if kind == 0:
                s.sendall(rng.randbytes(rng.randint(1, 4096)))
            elif kind == 1:
                path = rng.choice(paths).encode()
                s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            elif kind == 2:
                body = b"[" * 50_000
                s.sendall(
                    b"POST /tx HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            else:
                body = rng.randbytes(2000)
                s.sendall(
                    b"POST /peer/msgs HTTP/1.1\r\nHost: x\r\nX-Medchain-From: 1\r\n"
                    b"Content-Type: application/msgpack\r\n"
                    + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                    + body
                )
            s.settimeout(2.0)
            s.recv(4096)
        except OSError:
            pass
        finally:
            s.close()


def _oversize(addr: tuple[str, int], until: float) -> None:
    """Bodies that declare (or stream) far more than the limits: 1 GiB of msgpack to /tx."""
    chunk = b"\x00" * 65536
    while time.monotonic() < until:
        s = _connect(addr)
        if s is None:
            continue
        try:
            s.sendall(
                b"POST /tx HTTP/1.1\r\nHost: x\r\nContent-Type: application/msgpack\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
            )
            for _ in range(400):  # 25 MiB streamed, beyond the 8 MiB limit
                s.sendall(b"10000\r\n" + chunk + b"\r\n")
        except OSError:
            pass
        finally:
            s.close()


def _slow(addr: tuple[str, int], until: float) -> None:
    """Slowloris: many connections each sending one header byte every second."""
    socks: list[socket.socket] = []
    while time.monotonic() < until:
        while len(socks) < SLOW_CONNECTIONS:
            s = _connect(addr)
            if s is None:
                break
            s.setblocking(False)
            socks.append(s)
        for s in list(socks):
            try:
                s.send(b"X")
            except OSError:
                socks.remove(s)
                s.close()
        time.sleep(1.0)
    for s in socks:
        s.close()


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_flooded_node_stays_up_bounded_and_the_cluster_commits(make_cluster: object) -> None:
    cluster: Cluster = make_cluster("flood")  # type: ignore[operator]
    cluster.up(4)
    start_height, _ = cluster.wait_converged(0)
    flooded = cluster.procs.spec(0)
    pid = cluster.procs.pid(0)
    assert pid is not None
    parts = urlsplit(flooded.url)
    addr = (parts.hostname or "127.0.0.1", parts.port or 80)
    until = time.monotonic() + FLOOD_S
    ctx = mp.get_context("spawn")
    workers = [
        ctx.Process(target=_garbage, args=(addr, until, 1)),
        ctx.Process(target=_garbage, args=(addr, until, 2)),
        ctx.Process(target=_oversize, args=(addr, until)),
        ctx.Process(target=_slow, args=(addr, until)),
    ]
    for w in workers:
        w.start()
    peak = 0.0
    try:
        time.sleep(2.0)  # the flood is on
        # Valid traffic to the flooded node itself, during the flood.
        receipts = run_cli_json(
            "submit", "--dir", str(cluster.root), "--count", "300", "--wait", "--timeout", "90"
        )
        assert len(receipts) == 300 and all(r["height"] >= 1 for r in receipts)
        while time.monotonic() < until:
            peak = max(peak, _rss_mib(pid))
            assert fetch_status(flooded.url) is not None or os.path.exists(f"/proc/{pid}")
            time.sleep(0.5)
    finally:
        for w in workers:
            w.join(timeout=FLOOD_S + 30)
            if w.is_alive():
                w.kill()
    peak = max(peak, _rss_mib(pid))
    assert peak < RSS_BOUND_MIB, f"flooded node reached {peak:.0f} MiB"
    status = fetch_status(flooded.url)
    assert status is not None and status["healthy"] is True
    # The flood did reach the node: its peer endpoint refused the garbage bodies.
    assert sum(status["transport"]["rejected_bodies"].values()) > 0, status["transport"]
    height, _ = cluster.wait_converged(start_height + 1)
    assert height > start_height
    print(f"flood: {FLOOD_S:.0f}s, flooded node peak RSS {peak:.0f} MiB, height {height}")
