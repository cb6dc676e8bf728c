"""``python -m tests.fuzz.run TARGET --seconds N``: fuzz one target for a bounded time.

With atheris installed (PyPI ``atheris``; Linux wheels) this is coverage-guided libFuzzer over
the instrumented node modules, seeded from ``tests/fuzz/corpus/TARGET/``; new interesting
inputs go to ``--work DIR`` (never into the repository). Without atheris the same target gets
random bytes and mutations of the seed corpus for the same time (``--engine random`` forces
this). A finding exits non-zero and writes the input under ``--work``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus"


def _target(name: str) -> tuple[Callable[[bytes], None], Callable[[], None]]:
    from tests.fuzz import targets

    if name == "peer_frames":
        return targets.peer_frames, lambda: None
    http = targets.HttpTarget()
    return http, http.close


def _mutate(rng: random.Random, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del data[pos : pos + rng.randint(1, 16)]
        else:
            data[pos:pos] = rng.choice((b"\x91" * 40, b"[" * 40, "١²".encode(), b"9" * 30))
    return bytes(data)


def run_random(name: str, seconds: float, work: Path, seed: int) -> int:
    fn, close = _target(name)
    seeds = [p.read_bytes() for p in sorted((CORPUS / name).glob("*"))] or [b""]
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    runs = 0
    try:
        while time.monotonic() < deadline:
            data = (
                rng.randbytes(rng.randint(0, 200))
                if runs % 4 == 0
                else _mutate(rng, rng.choice(seeds))
            )
            runs += 1
            try:
                fn(data)
            except Exception:
                crash = work / f"crash-{name}-{runs}"
                crash.write_bytes(data)
                print(f"finding after {runs} runs, input in {crash}", file=sys.stderr)
                raise
    finally:
        close()
    print(f"{name}: {runs} inputs in {seconds:.0f}s, no finding (random engine)")
    return 0


def run_atheris(name: str, seconds: float, work: Path) -> int:
    import atheris

    with atheris.instrument_imports(include=["node", "consensus"]):
        fn, _close = _target(name)
    new = work / "corpus"
    new.mkdir(parents=True, exist_ok=True)
    args = [
        sys.argv[0],
        f"-max_total_time={int(seconds)}",
        "-rss_limit_mb=3072",
        "-timeout=20",
        f"-artifact_prefix={work}/",
        "-print_final_stats=1",
        str(new),
        str(CORPUS / name),
    ]
    atheris.Setup(args, fn)
    atheris.Fuzz()  # exits the process: 0 at the time limit, non-zero on a finding
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    parser.add_argument("target", choices=("peer_frames", "http_routes"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--work", type=Path, default=None, help="new corpus and findings")
    parser.add_argument("--engine", choices=("auto", "atheris", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix=f"fuzz-{args.target}-"))
    work.mkdir(parents=True, exist_ok=True)
    engine = args.engine
    if engine == "auto":
        try:
            import atheris  # noqa: F401

            engine = "atheris"
        except ImportError:
            engine = "random"
    if engine == "atheris":
        return run_atheris(args.target, args.seconds, work)
    return run_random(args.target, args.seconds, work, args.seed)


if __name__ == "__main__":
    sys.exit(main())
