"""Seeds that once failed: (seed, scenario, n), each run by every ``make test``.

Add a line for every failure the sweep finds, with what it was, so the fix stays fixed.
Replay one with ``python -m tests.sim.run --seed S --scenario NAME --n N [--trace]``.
"""

from __future__ import annotations

REGRESSIONS: list[tuple[int, str, int]] = [
    # node/codec rejected the stripped batches (ids without txs) that view-changes carry.
    (0, "crash", 4),
    (99, "random", 4),
    # A primary restarted in a view it had started re-proposed seqs its persisted new-view had
    # already re-issued: recovery ignored NewView.pre_prepares (honest equivocation).
    (188, "random", 4),
    (113, "random", 7),
    (399, "random", 7),
    # A batch prepared in view v and re-issued in view v+2 repeated a transaction committed in
    # view v+1 (double commit on every honest chain).
    (276, "random", 7),
    # View-change timers started before 2f+1 view-changes arrived: one honest replica kept
    # running a view ahead of the others and no new view ever formed (liveness).
    (5, "random", 4),
    (36, "silent", 4),
    (453, "random", 4),
    (972, "random", 4),
    # Only each replica's newest view-change was kept: one that timed out again stopped
    # counting towards the view the others were in, and the new primary never had 2f+1.
    (554, "random", 4),
]
