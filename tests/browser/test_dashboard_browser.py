"""The dashboard of a running 4-node cluster, in headless chromium: four nodes, a rising
height, and a node killed with SIGKILL turning unhealthy on the page.

The screenshot is kept as a test artifact: ``dashboard.png`` in the test's tmp dir, and in
``$MEDCHAIN_TEST_ARTIFACTS`` when that is set (CI keeps that directory). It shows heights,
views and health only: no patient payload ever reaches the dashboard.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.chromium import missing, page
from tests.integration.conftest import Cluster

PAGE_TIMEOUT_MS = 60_000
SERVE_TIMEOUT_S = 30.0
LOAD_ROUNDS = 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def dashboard(root: Path, log: Path) -> Iterator[str]:
    """``medchain dashboard --dir root`` as a subprocess; its URL once it serves."""
    port = _free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "scripts.cli",
                "dashboard",
                "--dir",
                str(root),
                "--port",
                str(port),
                "--interval",
                "0.5",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dashboard exited {proc.returncode}: {log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"dashboard did not serve within {SERVE_TIMEOUT_S}s: {log.read_text()}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def load(root: Path) -> Iterator[None]:
    """Keep submitting small batches of synthetic records until the block ends (bounded)."""
    stop = threading.Event()

    def run() -> None:
        for _ in range(LOAD_ROUNDS):
            if stop.is_set():
                return
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "scripts.cli",
                    "submit",
                    "--dir",
                    str(root),
                    "--count",
                    "40",
                ],
                capture_output=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
                check=False,
            )
            stop.wait(0.3)

    thread = threading.Thread(target=run, name="load", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(90)


def _keep(shot: Path) -> None:
    artifacts = os.environ.get("MEDCHAIN_TEST_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, Path(artifacts) / shot.name)


def test_dashboard_shows_cluster_and_killed_node(
    make_cluster: Callable[[str], Cluster], tmp_path: Path
) -> None:
    reason = missing()
    if reason:
        pytest.skip(reason)
    cluster = make_cluster("cluster")
    cluster.up(nodes=4)
    shot = tmp_path / "dashboard.png"
    with (
        dashboard(cluster.root, tmp_path / "dashboard.log") as url,
        load(cluster.root),
        page(tmp_path / "profile") as p,
    ):
        p.goto(url, timeout=PAGE_TIMEOUT_MS)
        p.wait_for_function(
            "document.querySelectorAll('.node').length === 4", timeout=PAGE_TIMEOUT_MS
        )
        assert p.locator(".node").count() == 4
        ids = sorted(p.locator(".node").evaluate_all("els => els.map(e => Number(e.dataset.node))"))
        assert ids == [0, 1, 2, 3]

        heights = (
            "Math.max(...[...document.querySelectorAll('dd[data-field=height]')]"
            ".map(e => Number(e.textContent) || 0))"
        )
        p.wait_for_function(f"{heights} >= 1", timeout=PAGE_TIMEOUT_MS)
        first = p.evaluate(heights)
        p.wait_for_function(f"{heights} > {first}", timeout=PAGE_TIMEOUT_MS)
        assert p.evaluate(heights) > first  # the page follows the chain as it grows
        assert p.locator(".node[data-health=ok]").count() == 4

        victim = 3
        cluster.procs.kill(victim, signal.SIGKILL)
        card = f".node[data-node='{victim}']"
        p.wait_for_function(
            f"document.querySelector(\"{card}\").dataset.health !== 'ok'", timeout=PAGE_TIMEOUT_MS
        )
        assert p.locator(card).get_attribute("data-health") in ("down", "unhealthy")
        assert p.locator(f"{card} .health").inner_text() in ("down", "unhealthy")
        p.wait_for_function(
            "[...document.querySelectorAll('#feed li')]"
            f".some(li => li.textContent.includes('node {victim}: down'))",
            timeout=PAGE_TIMEOUT_MS,
        )
        p.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _keep(shot)
