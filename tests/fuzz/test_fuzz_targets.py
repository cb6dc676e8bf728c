"""The fuzz targets run for a few seconds each in ``make test`` (``make fuzz SECONDS=N`` runs
them as long as asked): atheris where installed, else the random engine. A finding fails the
test and leaves its input in the work directory named in the output."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.run import CORPUS
from tests.fuzz.targets import TARGETS, HttpTarget, peer_frames

SECONDS = os.environ.get("MEDCHAIN_FUZZ_SECONDS", "3")


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_for_a_bounded_time(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.run", target, "--seconds", SECONDS, "--work", tmp_path],
        capture_output=True,
        text=True,
        timeout=float(SECONDS) + 120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, (
        f"finding in {target}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )


def test_seed_corpus_exercises_every_route_without_a_finding() -> None:
    for seed in sorted((CORPUS / "peer_frames").iterdir()):
        peer_frames(seed.read_bytes())
    http = HttpTarget()
    try:
        for seed in sorted((CORPUS / "http_routes").iterdir()):
            http(seed.read_bytes())
    finally:
        http.close()


def test_http_target_reports_a_500() -> None:
    """The target is not blind: a route that fails with 500 is a finding."""
    http = HttpTarget()

    async def boom(request: object) -> object:
        raise RuntimeError("bug")

    try:
        http.node.app.router._frozen = False  # add one broken route after the fact
        http.node.app.router.add_get("/boom", boom)
        with pytest.raises(AssertionError, match="HTTP 500"):
            http(b"GET /boom\n\n")
    finally:
        http.close()
