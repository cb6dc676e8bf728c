"""What the observer's hooks cost a round: the same PBFT workload with and without them.

The workload is the pure core (real Ed25519, no SQLite, no HTTP) of a 4-replica cluster
committing batches in the synchronous harness, each step its own round: the worst case for
per-round hooks (a real node's round steps up to ``max_events_per_round`` events and also
writes SQLite and talks HTTP, so the hooks are an even smaller share of it).

The test only checks that both runs do the same work and that the hooks saw it; the figures
come from running this module, alone on the machine::

    flock -x /work/wt/machine.lock python -m tests.unit.test_observer_cost [batches] [reps]

On the 2-core development machine (150 batches of 50 txs, 7 alternating runs, medians):
rounds as the harness forms them (4126 steps in 1943 rounds) 0.360 s without the hooks, 0.386 s
with them (+7.3%, 6.4 us per step); one event per round 0.359 s and 0.404 s (+12.5%, 10.9 us
per step). Against the pure core's ~87 us per step that is measurable; against a node's step,
which also decodes the frame, persists it in SQLite and answers HTTP, it is a smaller share.
"""

from __future__ import annotations

import statistics
import sys
import time

from consensus.events import Event, Receive, Tick
from node.observer import Observer
from tests.consensus.harness import Cluster, tx


def _observer(cluster: Cluster, i: int) -> Observer:
    return Observer(
        node_id=i,
        n=cluster.n,
        f=(cluster.n - 1) // 3,
        clock=lambda: cluster.now,  # type: ignore[arg-type]
        events_max=20_000,
        events_max_bytes=4 * 1024 * 1024,
        submitted_max=200_000,
        ready_max_lag_seqs=64,
    )


class RoundCluster(Cluster):
    """The harness delivering in rounds as a node's consensus task forms them: every message
    waiting for a replica is stepped, then the round's Readies are carried out together (the
    Tick last, when due). ``rounds=False``: every step its own round, the worst case for
    per-round costs."""

    hooked = False

    def __init__(self, n: int = 4, *, rounds: bool = True, **overrides: int) -> None:
        super().__init__(n, **overrides)
        self.grouped = rounds
        self.steps = 0
        self.rounds = 0
        self.observers = [_observer(self, i) for i in range(n)]

    def feed(self, i: int, ev: Event) -> None:
        self.round(i, [ev])

    def run(self, ms: int, drop: object = None) -> None:
        end = self.now + ms
        while self.now < end:
            while self.queue:
                waiting: dict[int, list[Event]] = {}
                while self.queue:
                    src, dst, msg = self.queue.popleft()
                    if dst not in self.down and src not in self.down:
                        waiting.setdefault(dst, []).append(Receive(msg, src))
                for i, evs in waiting.items():
                    if self.grouped:
                        self.round(i, evs)
                    else:
                        for ev in evs:
                            self.round(i, [ev])
            self.now += 5
            for i, node in enumerate(self.nodes):
                if i not in self.down and node.deadline <= self.now:
                    self.round(i, [Tick()])

    def round(self, i: int, evs: list[Event]) -> None:
        self.rounds += 1
        self.steps += len(evs)
        replica = self.nodes[i].replica
        readies = [replica.step(ev, self.now) for ev in evs]
        for ready in readies:
            self.apply(i, ready)


class HookedCluster(RoundCluster):
    """The same, with a node's observer hooks where the runtime calls them."""

    hooked = True

    def round(self, i: int, evs: list[Event]) -> None:
        self.rounds += 1
        self.steps += len(evs)
        obs = self.observers[i]
        replica = self.nodes[i].replica
        obs.round_started(replica)
        readies = []
        for ev in evs:
            if isinstance(ev, Receive):
                obs.msg_in(ev)
            readies.append(replica.step(ev, self.now))
        for ready in readies:
            self.apply(i, ready)
        obs.round_done(replica, readies)


CONFIG = {"max_batch_txs": 50, "checkpoint_interval": 8, "watermark_window": 32}


def workload(cluster: RoundCluster, batches: int) -> float:
    """Commit ``batches`` full batches through replica 0; the seconds it took."""
    started = time.perf_counter()
    for i in range(cluster.n):
        cluster.feed(i, Tick())
    for b in range(batches):
        txs = [tx(b * 1000 + k) for k in range(CONFIG["max_batch_txs"])]
        if cluster.hooked:
            cluster.observers[0].submitted([t for t, _ in txs])
        cluster.submit(0, txs)
        cluster.run(30)
    cluster.run(200)
    return time.perf_counter() - started


def test_the_hooked_cluster_does_the_same_work_and_records_it() -> None:
    plain, hooked = RoundCluster(**CONFIG), HookedCluster(**CONFIG)
    workload(plain, 4)
    workload(hooked, 4)
    assert hooked.heads() == plain.heads()
    assert hooked.heads()[0][0] == 4
    assert (hooked.steps, hooked.rounds) == (plain.steps, plain.rounds)
    assert hooked.rounds < hooked.steps  # rounds of several events, as in a node
    obs = hooked.observers[1]
    kinds = {e.kind for e in obs.ring.page(0, 5000).events}
    assert {"msg_in", "msg_out", "commit"} <= kinds
    assert obs.received["pre-prepare"] == 4 and obs.sent["prepare"] == 4 * 3
    assert hooked.observers[0].commit_latency.count == 4 * CONFIG["max_batch_txs"]
    assert obs.consensus_round.count == 4
    assert all(o.task_round.count == 0 for o in plain.observers)


def _compare(batches: int, reps: int, *, rounds: bool) -> None:
    plain_s: list[float] = []
    hooked_s: list[float] = []
    steps = n_rounds = 0
    for _ in range(reps):  # side by side, alternating, so drift hits both alike
        plain_s.append(workload(RoundCluster(rounds=rounds, **CONFIG), batches))
        hooked = HookedCluster(rounds=rounds, **CONFIG)
        hooked_s.append(workload(hooked, batches))
        steps, n_rounds = hooked.steps, hooked.rounds
    p, h = statistics.median(plain_s), statistics.median(hooked_s)
    what = "rounds as a node forms them" if rounds else "one event per round (worst case)"
    print(f"-- {what}: {steps} steps in {n_rounds} rounds")
    print(f"   without hooks: median {p:.3f} s  {batches / p:.1f} batches/s")
    print(f"   with hooks:    median {h:.3f} s  {batches / h:.1f} batches/s")
    print(f"   overhead: {100 * (h - p) / p:+.2f}%  ({1e6 * (h - p) / steps:+.2f} us per step)")
    print("   runs:", [f"{x:.3f}" for x in plain_s], [f"{x:.3f}" for x in hooked_s])


def main(argv: list[str]) -> None:
    batches = int(argv[0]) if argv else 200
    reps = int(argv[1]) if len(argv) > 1 else 7
    print(f"{batches} batches x {CONFIG['max_batch_txs']} txs, 4 replicas, {reps} reps each")
    _compare(batches, reps, rounds=True)
    _compare(batches, reps, rounds=False)


if __name__ == "__main__":
    main(sys.argv[1:])
