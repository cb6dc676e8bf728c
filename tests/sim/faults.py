"""Fault schedules and named scenarios: everything a seed decides about one simulated run.

A run has three phases on the virtual clock:
  1. faults (0 .. heal_at): clients submit transactions while the scenario's faults play out;
  2. heal (at heal_at): the network turns benign and every crashed node restarts; byzantine
     nodes stay byzantine (at most f of them, which PBFT must tolerate forever);
  3. settle (heal_at .. heal_at + SETTLE_MS): a probe transaction goes to every honest node, and
     the run ends as soon as every transaction any client submitted is on every honest chain.
     If that has not happened by the end of the settle window, liveness is violated.
Safety invariants are checked throughout by the cluster itself.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.sim.byzantine import BEHAVIOURS, Collusion
from tests.sim.cluster import SIM_CONFIG, SimCluster
from tests.sim.invariants import InvariantViolation, RunId
from tests.sim.network import LinkPolicy

SETTLE_MS = 10_000
"""Longest the cluster may take to commit everything after faults heal: a few view changes at
the capped view timeout, plus catching up restarted nodes."""

PRIMARY_BEHAVIOURS = ("silent", "equivocate", "invalid_txs")
"""Behaviours that matter most in the primary: a scenario puts them on node 0 (view 0's
primary) half of the time."""

Build = Callable[[SimCluster, random.Random, int], None]
"""Installs a scenario's faults: (cluster, scenario rng, heal_at_ms)."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    build: Build
    description: str
    expect: str | None = None
    """The violation kind this scenario must produce (it goes beyond what PBFT tolerates)."""
    jitter_config: bool = True
    """Draw protocol parameters (K, window, batch size, timers) from the seed."""


@dataclass(frozen=True, slots=True)
class SimResult:
    seed: int
    scenario: str
    n: int
    codec: bool
    ok: bool
    kind: str | None = None
    message: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0
    """For the progress display only; never asserted on."""

    @property
    def replay(self) -> str:
        return RunId(self.seed, self.scenario, self.n, self.codec).replay_command()


# ---------------------------------------------------------------------------------------------
# Random building blocks


def random_config(rng: random.Random) -> dict[str, int]:
    k = rng.choice([2, 4, 8])
    view_timeout = rng.choice([100, 150, 300])
    return {
        **SIM_CONFIG,
        "checkpoint_interval": k,
        "watermark_window": k * rng.choice([2, 4]),
        "max_inflight": rng.choice([1, 2, 4, 8]),
        "max_batch_txs": rng.choice([1, 3, 8]),
        "batch_timeout_ms": rng.choice([0, 1, 5]),
        "view_timeout_ms": view_timeout,
        "max_view_timeout_ms": view_timeout * 8,
        "fetch_batch_blocks": rng.choice([1, 4, 16]),
    }


def jittery(rng: random.Random) -> LinkPolicy:
    """Random delays with occasional spikes: heavy reordering, nothing lost."""
    return LinkPolicy(1, rng.choice([3, 10, 25]), spike=rng.choice([0.0, 0.05, 0.2]), spike_ms=60)


def lossy(rng: random.Random) -> LinkPolicy:
    return LinkPolicy(
        1,
        rng.choice([3, 10, 25]),
        drop=rng.choice([0.01, 0.05, 0.15, 0.3]),
        duplicate=rng.choice([0.0, 0.05, 0.2]),
        spike=rng.choice([0.0, 0.05, 0.2]),
        spike_ms=80,
    )


def _window(rng: random.Random, heal_at: int) -> tuple[int, int]:
    """A random [start, end) inside the fault phase."""
    start = rng.randint(0, max(0, heal_at - 100))
    return start, rng.randint(start + 50, max(start + 50, heal_at))


def add_partition(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    """Isolate the current primary, one random node, or split the cluster in two; then heal."""
    start, end = _window(rng, heal_at)
    shape = rng.choice(["primary", "one", "split"])

    def cut() -> None:
        nodes = list(range(cluster.n))
        if shape == "split":
            rng.shuffle(nodes)
            k = rng.randint(1, cluster.n - 1)
            groups = [nodes[:k], nodes[k:]]
        else:
            alone = cluster.current_primary() if shape == "primary" else rng.randrange(cluster.n)
            groups = [[alone], [i for i in nodes if i != alone]]
        cluster.network.partition(groups)
        cluster.log(f"partition {groups}")

    def mend() -> None:
        cluster.network.partition([])
        cluster.log("partition healed")

    cluster.at(start, cut)
    cluster.at(end, mend)


def add_crash(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    """Crash an honest node (sometimes between persisting and sending) and restart it."""
    honest = [node.replica_id for node in cluster.nodes if node.honest]
    victim = rng.choice(honest)
    torn = rng.choice([None, None, "after-persist", "after-commit"])
    start, end = _window(rng, heal_at)
    cluster.at(start, lambda: cluster.crash(victim, torn=torn))
    cluster.at(end, lambda: cluster.restart(victim))


def add_slow_links(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    """One node's outgoing links become slow and lossy for a while."""
    node = rng.randrange(cluster.n)
    slow = LinkPolicy(20, 120, drop=rng.choice([0.0, 0.2]))
    start, end = _window(rng, heal_at)

    def degrade() -> None:
        for dest in range(cluster.n):
            cluster.network.set_link(node, dest, slow)

    def restore() -> None:
        for dest in range(cluster.n):
            cluster.network.set_link(node, dest, None)

    cluster.at(start, degrade)
    cluster.at(end, restore)


def add_byzantine(cluster: SimCluster, rng: random.Random, count: int, name: str | None) -> None:
    """Make ``count`` nodes byzantine, each with behaviour ``name`` (or a random one)."""
    chosen: set[int] = set()
    for _ in range(count):
        behaviour = name or rng.choice([*BEHAVIOURS, "twin"])
        free = [i for i in range(cluster.n) if i not in chosen]
        if behaviour in PRIMARY_BEHAVIOURS and 0 in free and rng.random() < 0.5:
            target = 0
        else:
            target = rng.choice(free)
        chosen.add(target)
        if behaviour == "twin":
            cluster.add_twin(target, boot_at_ms=rng.choice([0, 0, rng.randint(1, 300)]))
        else:
            cluster.set_behaviour(target, BEHAVIOURS[behaviour](cluster.codec is not None))


# ---------------------------------------------------------------------------------------------
# Scenarios


def _normal(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    cluster.network.policy = jittery(rng)


def _drops(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    cluster.network.policy = lossy(rng)


def _partition(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    cluster.network.policy = jittery(rng)
    for _ in range(rng.randint(1, 3)):
        add_partition(cluster, rng, heal_at)


def _crash(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    cluster.network.policy = jittery(rng)
    for _ in range(rng.randint(1, 3)):
        add_crash(cluster, rng, heal_at)


def _byzantine(name: str) -> Build:
    def build(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
        cluster.network.policy = jittery(rng)
        add_byzantine(cluster, rng, cluster.f, name)

    return build


def _random(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
    """A random mix: up to f byzantine nodes and a few network and crash faults."""
    add_byzantine(cluster, rng, rng.randint(0, cluster.f), None)
    cluster.network.policy = lossy(rng) if rng.random() < 0.5 else jittery(rng)
    faults = [add_partition, add_crash, add_slow_links]
    for _ in range(rng.randint(0, 4)):
        rng.choice(faults)(cluster, rng, heal_at)


def _collusion(extra: int) -> Build:
    """f + extra colluders led by view 0's primary split the honest nodes over two batches."""

    def build(cluster: SimCluster, rng: random.Random, heal_at: int) -> None:
        colluders = [0, *rng.sample(range(1, cluster.n), cluster.f + extra - 1)]
        signers = {i: cluster.nodes[i].crypto.sign for i in colluders}
        collusion = Collusion(colluders, signers, cluster.n)
        for i in colluders:
            cluster.set_behaviour(i, collusion.member(i))
        cluster.network.policy = LinkPolicy(1, 3)

    return build


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario("normal", _normal, "no faults; random delays and reordering"),
        Scenario("drops", _drops, "loss, duplication and reordering on every link"),
        Scenario("partition", _partition, "partitions: primary isolated, one node, or a split"),
        Scenario("crash", _crash, "crash and restart, sometimes between persist and send"),
        *(
            Scenario(name, _byzantine(name), f"f byzantine nodes: {name}")
            for name in [*BEHAVIOURS, "twin"]
        ),
        Scenario("random", _random, "a random mix of network, crash and byzantine faults"),
        Scenario(
            "collude",
            _collusion(0),
            "f colluders (the primary among them) split the honest nodes over two batches",
        ),
        Scenario(
            "fork",
            _collusion(1),
            "f+1 colluders, more than PBFT tolerates: the checker must report a fork",
            expect="fork",
            jitter_config=False,
        ),
    ]
}


# ---------------------------------------------------------------------------------------------
# Running


def build_cluster(
    seed: int,
    scenario: str,
    n: int,
    *,
    codec: bool = True,
    trace: Callable[[str], None] | None = None,
) -> tuple[SimCluster, int]:
    """The cluster a (seed, scenario, n) describes, with faults installed; returns it and the
    virtual time at which faults heal."""
    spec = SCENARIOS[scenario]
    rng = random.Random(f"medchain-sim/{seed}/scenario/{scenario}")
    config = random_config(rng) if spec.jitter_config else None
    cluster = SimCluster(n, seed, scenario=scenario, config=config, codec=codec, trace=trace)
    heal_at = rng.randint(400, 1500)
    spec.build(cluster, rng, heal_at)
    cluster.start()
    cluster.schedule_load(rng.randint(10, 30), 0, heal_at)
    return cluster, heal_at


def run_scenario(
    seed: int,
    scenario: str = "random",
    n: int = 4,
    *,
    codec: bool = True,
    trace: Callable[[str], None] | None = None,
) -> SimCluster:
    """Run one seed to the end; raises InvariantViolation on any safety or liveness failure."""
    cluster, heal_at = build_cluster(seed, scenario, n, codec=codec, trace=trace)
    cluster.run_until(heal_at)
    cluster.heal()
    probed = heal_at + 1

    def probe() -> None:
        """One fresh transaction per honest node: the cluster must still make progress."""
        for node in cluster.honest_nodes:
            cluster.client_submit(node.replica_id)

    cluster.at(probed, probe)
    liveness = cluster.liveness
    assert liveness is not None

    def settled() -> bool:
        return liveness.outstanding == 0 and cluster.now >= probed

    if not cluster.run_until(heal_at + SETTLE_MS, stop=settled):
        detail = (
            f"{liveness.outstanding} of {liveness.expected} transactions not on every honest "
            f"chain {SETTLE_MS}ms after faults healed; e.g. (tx, chains) {liveness.missing()}; "
            f"heights {cluster.summary()['heights']}; views {cluster.summary()['views']}"
        )
        raise cluster.checker.fail("liveness", detail, cluster.now)
    return cluster


def run_seed(seed: int, scenario: str = "random", n: int = 4, *, codec: bool = True) -> SimResult:
    """Run one seed and report the outcome instead of raising (for the sweep and the CLI)."""
    spec = SCENARIOS[scenario]
    started = time.perf_counter()
    try:
        cluster = run_scenario(seed, scenario, n, codec=codec)
    except InvariantViolation as violation:
        ok = violation.kind == spec.expect
        return SimResult(
            seed,
            scenario,
            n,
            codec,
            ok,
            violation.kind,
            str(violation),
            {},
            time.perf_counter() - started,
        )
    wall = time.perf_counter() - started
    if spec.expect is not None:
        message = f"[missed] expected a {spec.expect!r} violation, the run passed"
        return SimResult(
            seed, scenario, n, codec, False, "missed", message, cluster.summary(), wall
        )
    return SimResult(seed, scenario, n, codec, True, None, None, cluster.summary(), wall)
