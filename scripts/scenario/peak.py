"""A scenario's load as a share of the measured peak: the peak comes from a short bench on a
fresh cluster of the scenario's shape (its node count, its ``[consensus]``, the fault layer
on with an empty timeline), run before the scenario and kept for the rest of the invocation.

The bench is the one ``medchain bench`` runs by default: a closed loop (8 outstanding requests
of 100 pre-signed 1 KB transactions, each waiting for its commit), PEAK_WARMUP_S of warm-up
then PEAK_DURATION_S measured; the peak is its committed tx/s. Its result folder stays beside
the scenario reports (``OUT/peak-N``) and report.json says how the rate was chosen.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from scripts.scenario.params import Scenario

PEAK_WARMUP_S: Final = 2.0
PEAK_DURATION_S: Final = 8.0


class PeakError(RuntimeError):
    """The peak could not be measured (the bench failed or committed nothing)."""


@dataclass(frozen=True, slots=True)
class Peak:
    tx_s: float
    how: dict[str, Any]
    """How it was measured (or that it was given), for report.json."""


def shape(sc: Scenario) -> tuple[int, tuple[tuple[str, int], ...]]:
    """What the peak depends on: the node count and the consensus overrides."""
    return sc.nodes, tuple(sorted(sc.consensus.items()))


class PeakCache:
    """One peak per cluster shape per invocation: measured once, or given (``--peak``)."""

    def __init__(self, out_root: Path, given_tx_s: float | None, seed: int, quiet: bool) -> None:
        self._out_root = out_root
        self._given = given_tx_s
        self._seed = seed
        self._quiet = quiet
        self._peaks: dict[tuple[int, tuple[tuple[str, int], ...]], Peak] = {}

    def peak(self, sc: Scenario) -> tuple[Peak, bool]:
        """The peak for ``sc``'s shape and whether it came from the cache."""
        key = shape(sc)
        if key in self._peaks:
            return self._peaks[key], True
        if self._given is not None:
            found = Peak(self._given, {"method": "given on the command line (--peak)"})
        else:
            found = measure_peak(sc, self._out_root / f"peak-{sc.nodes}", self._seed, self._quiet)
        self._peaks[key] = found
        return found, False

    def rate(self, sc: Scenario, share: float) -> tuple[float, dict[str, Any]]:
        """The rate for ``share`` of the peak, and what report.json says about it."""
        found, cached = self.peak(sc)
        info = {
            "share_of_peak": share,
            "peak_tx_s": round(found.tx_s, 1),
            "peak": {**found.how, "cached": cached},
        }
        return found.tx_s * share, info


def measure_peak(sc: Scenario, out: Path, seed: int, quiet: bool) -> Peak:
    """Run the default closed-loop bench on a fresh cluster of ``sc``'s shape."""
    # Imported here: the bench pulls in matplotlib and psutil, which only this step needs.
    from scripts.bench.main import run_point
    from scripts.bench.params import BenchError, add_bench_arguments, build_points
    from scripts.bench.progress import BenchUI
    from scripts.scenario.bench import BenchTimeline

    parser = argparse.ArgumentParser(prog="medchain bench")
    add_bench_arguments(parser)
    argv = ["--nodes", str(sc.nodes), "--duration", f"{PEAK_DURATION_S:g}"]
    argv += ["--warmup", f"{PEAK_WARMUP_S:g}", "--seed", str(seed), "--out", str(out)]
    args = parser.parse_args(argv)
    console = Console(stderr=True, highlight=False, quiet=quiet)
    command = "medchain bench " + " ".join(argv)
    console.print(f"measuring the peak of a {sc.nodes}-node cluster: {command}", markup=False)
    try:
        points, _ = build_points(args)
        empty = BenchTimeline(dataclasses.replace(sc, steps=()))
        with BenchUI(console) as ui:
            result = run_point(args, points[0], out, ui, empty)
    except BenchError as e:
        raise PeakError(f"the peak bench failed: {e}") from e
    tx_s = result.get("throughput_tx_per_s")
    if not isinstance(tx_s, int | float) or tx_s <= 0:
        raise PeakError(f"the peak bench committed nothing (see {out}/result.json)")
    params = result.get("manifest", {}).get("parameters", {})
    how = {
        "method": "medchain bench, closed loop, on a fresh cluster of the scenario's shape "
        "(nodes, [consensus], fault layer on, no fault)",
        "command": command,
        "concurrency": params.get("concurrency"),
        "client_batch": params.get("client_batch"),
        "payload_bytes": params.get("payload_size"),
        "warmup_s": PEAK_WARMUP_S,
        "measured_s": result.get("measured_seconds"),
        "committed_tx_s": tx_s,
        "latency_p50_ms": (result.get("latency_ms") or {}).get("p50"),
        "result": str(out / "result.json"),
    }
    console.print(f"peak: {tx_s:,.0f} tx/s committed")
    return Peak(float(tx_s), how)
