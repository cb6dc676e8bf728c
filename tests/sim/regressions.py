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
    # Recovery restored a pre-prepare's slot but not its transactions: after two crashes the
    # only replicas that had accepted a batch held just its digest when a new view re-issued it
    # stripped, so it committed with nobody able to execute it (stuck at height 0 in view 6).
    (101474, "random", 4),
    # Backups that held a request only in a pre-prepare of a byzantine primary (with a twin)
    # never started their view timers: the one honest replica that suspected it could not
    # gather f+1, and the request never committed (n=7, views 2 and 3).
    (100763, "random", 7),
    # A batch prepared in view 1 at seq 5, left out of view 2's new-view and re-issued by view
    # 3, shared a transaction with a fresh batch view 2 certified at seq 6: the one repeat rule
    # called that a violation although no honest backup of view 2 could have known.
    (114145, "random", 7),
    # The simulator's shell forgot persisted messages before storing the blocks of the same
    # step (the contract says after): a crash in between lost the pre-prepare a restarted
    # primary needed, and it signed seq 4 of view 0 again (honest equivocation).
    (118334, "random", 4),
    # Suspicions (f+1 before a view change) were also sent by replicas whose timer fired
    # during a view change, where nobody counts them: a new-view that never came was never
    # followed by a view change to v+2, and the cluster sat in view v+1 for good.
    (467, "random", 4),
    (52, "random", 7),
    # Withdrawing a suspicion on any valid Commit of its sender (retransmits of a stalled seq
    # included) kept f+1 suspicions from ever gathering under a byzantine twin: nothing
    # committed after the faults healed, all in view 0. Only a Commit for a new seq counts.
    (100945, "random", 7),
    (100958, "random", 7),
    (100985, "random", 7),
]
