"""Running a scenario end to end: a fresh cluster, the load, the status poller and the fault
timeline together, then heal, recover, settle and fetch every honest chain."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from rich.console import Console
from rich.markup import escape

from scripts import history
from scripts.client import NodeClient
from scripts.cluster import ClusterError, ClusterLayout, ClusterProcesses
from scripts.faultctl import AdminClient
from scripts.history import BlockSummary, CheckResult
from scripts.scenario.analyse import RunRecords, recovery_s, run_checks, unsettled
from scripts.scenario.cluster import STARTUP_TIMEOUT_S, Cluster, RunError, create_cluster
from scripts.scenario.faultlines import BEFORE_S, fault_timelines
from scripts.scenario.follow import CommitFollower
from scripts.scenario.load import MAX_INFLIGHT, Load
from scripts.scenario.params import Scenario
from scripts.scenario.poller import POLL_INTERVAL_S, Poller
from scripts.scenario.report import build_report, write_report
from scripts.scenario.timeline import Timeline
from scripts.timeline.fetch import Collector

DRAIN_GRACE_S: Final = 5.0
CHAIN_FETCH_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int
    out_dir: Path
    keep_cluster: bool = False
    quiet: bool = False
    cluster_dir: Path | None = None
    """Where to create the cluster (must hold none yet); kept afterwards. Default: a
    temporary directory, removed afterwards unless ``keep_cluster``."""
    rate: float | None = None
    """Transactions per second offered (resolved from the scenario's rate or load share and
    the measured peak); None: the scenario's own rate."""
    load_info: Mapping[str, Any] | None = None
    """How the rate was chosen (share, peak and how it was measured), for report.json."""


class Runner:
    def __init__(self, scenario: Scenario, options: RunOptions) -> None:
        self.scenario = scenario
        self.options = options
        self.out = Console(stderr=True, highlight=False, quiet=options.quiet)
        self._t0 = 0.0
        self._t0_wall_ms = 0
        """The wall clock at the start of the load: maps the run's clock onto the nodes'."""

    def clock(self) -> float:
        return time.monotonic() - self._t0

    def run(self) -> dict[str, Any]:
        """Run the scenario end to end; always tears the cluster down. Returns the report."""
        sc = self.scenario
        opts = self.options
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        if opts.cluster_dir is not None:
            work = opts.cluster_dir
            if ClusterLayout(work).exists():
                raise RunError(f"{work} already holds a cluster; give an empty --cluster-dir")
        else:
            work = Path(tempfile.mkdtemp(prefix=f"medchain-scenario-{sc.name}-"))
        procs: ClusterProcesses | None = None
        try:
            self.out.print(
                f"[bold]scenario {escape(sc.name)}[/]: {sc.nodes} nodes, seed {opts.seed}"
            )
            try:
                create_cluster(work, sc, opts.seed)
            except (RuntimeError, ValueError, OSError) as e:  # CliError, ConfigError, ...
                raise RunError(f"cannot create the cluster in {work}: {e}") from e
            procs = ClusterProcesses(work)
            try:
                procs.up(timeout=STARTUP_TIMEOUT_S)
            except ClusterError as e:
                raise RunError(f"cluster did not start: {e}") from e
            report = asyncio.run(self._run_async(Cluster(work, sc.nodes)))
            return report
        finally:
            if procs is not None:
                with contextlib.suppress(ClusterError, OSError):
                    procs.down()
            _copy_logs(ClusterLayout(work), opts.out_dir / "logs")
            if opts.keep_cluster or opts.cluster_dir is not None:
                self.out.print(f"cluster kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)

    async def _run_async(self, cluster: Cluster) -> dict[str, Any]:
        sc = self.scenario
        rng = random.Random(self.options.seed)
        urls = list(cluster.urls.values())
        rate = self.options.rate if self.options.rate is not None else sc.rate
        assert rate is not None, "a load share must be resolved to a rate before the run"
        async with NodeClient(urls, connections=MAX_INFLIGHT + 64) as nodes:
            poller = Poller(nodes, cluster, self.clock)
            admin = AdminClient(nodes.session, cluster.operator_secret)
            timeline = Timeline(cluster, admin, poller, self.clock, self.out)

            def honest() -> set[int]:
                return set(range(cluster.n)) - timeline.byzantine

            load = Load(nodes, cluster, name=sc.name, rate=rate, rng=rng, clock=self.clock)
            signed = await asyncio.to_thread(load.presign, sc.duration_s)
            self.out.print(
                f"{rate:,.0f} tx/s offered in requests of {load.batch}; {signed:,} "
                "transactions signed before the clock starts",
                markup=False,
            )
            follower = CommitFollower(nodes, cluster, self.clock, honest, load.note_commit)
            self._t0 = time.monotonic()
            self._t0_wall_ms = int(time.time() * 1000)
            # Read the flight recorders all along: a killed node's ring dies with it.
            recorder = Collector(
                nodes, cluster.urls, since_ms=self._t0_wall_ms - int(BEFORE_S * 1000)
            )
            stop_load, stop_poll = asyncio.Event(), asyncio.Event()
            load_task = asyncio.create_task(load.run(stop_load), name="load")
            poll_task = asyncio.create_task(poller.run(stop_poll), name="poller")
            events_task = asyncio.create_task(recorder.run(stop_poll), name="flight-recorder")
            follow_task = asyncio.create_task(follower.run(stop_poll), name="follower")
            try:
                timeline.schedule(sc.steps)
                await asyncio.sleep(max(0.0, sc.duration_s - self.clock()))
                self.out.print(f"[{self.clock():6.1f}s] healing everything", markup=False)
                await timeline.heal_all()
                await self._await_recovery(timeline, load)
                stop_load.set()
                load_s = self.clock()
                self.out.print(f"[{load_s:6.1f}s] load stopped; settling", markup=False)
                settled = await self._settle(poller, honest())
                await load.drain(DRAIN_GRACE_S)
                load.check_requests()
                await follower.step()  # the last blocks, for the commit times
                chains, verify_checks = await self._chains(nodes, cluster, sorted(honest()))
            finally:
                stop_load.set()
                stop_poll.set()
                for task in (load_task, poll_task, events_task, follow_task):
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.wait_for(task, 10.0)
                await load.drain(0.1)
            return self._finish(
                timeline, load, poller, recorder, chains, verify_checks, settled, load_s, rate
            )

    async def _await_recovery(self, timeline: Timeline, load: Load) -> None:
        """Keep the load running until every healed fault has seen progress (bounded)."""
        bound = self.scenario.recovery_s
        while True:
            waiting = [
                s
                for s in timeline.spans
                if s.healed_s is not None
                and load.first_commit_after(s.healed_s) is None
                and self.clock() < s.healed_s + bound
            ]
            if not waiting:
                return
            await asyncio.sleep(0.25)

    async def _settle(self, poller: Poller, honest: set[int]) -> dict[str, Any]:
        """Wait (bounded) until every honest node reports the same head twice in a row with an
        empty mempool."""
        start = self.clock()
        deadline = start + self.scenario.settle_s
        previous: tuple[int | None, str | None] | None = None
        reasons: list[str] = ["no honest node polled"]
        while self.clock() < deadline:
            snap = await poller.snapshot(sorted(honest))
            heads = {(s.height, s.head) for s in snap.values()}
            reasons = [r for s in snap.values() if (r := unsettled(s))]
            if not reasons and len(heads) == 1:
                head = next(iter(heads))
                if head == previous:
                    return {
                        "ok": True,
                        "seconds": round(self.clock() - start, 2),
                        "height": head[0],
                    }
                previous = head
            else:
                previous = None
                if not reasons:
                    heights = ", ".join(f"node {s.node}: {s.height}" for s in snap.values())
                    reasons = [f"heads differ ({heights})"]
            await asyncio.sleep(POLL_INTERVAL_S * 2)
        return {
            "ok": False,
            "seconds": round(self.clock() - start, 2),
            "height": None,
            "reasons": reasons,
        }

    async def _chains(
        self, nodes: NodeClient, cluster: Cluster, honest: list[int]
    ) -> tuple[dict[int, list[BlockSummary]], list[CheckResult]]:
        """Fetch and verify every honest chain; refetch (bounded) if heads differ because a
        last block landed between two fetches."""
        chains: dict[int, list[BlockSummary]] = {}
        problems: list[str] = []
        for attempt in range(CHAIN_FETCH_ATTEMPTS):
            chains, problems = {}, []
            docs = await asyncio.gather(
                *(history.fetch_chain(nodes, cluster.urls[i]) for i in honest),
                return_exceptions=True,
            )
            for i, d in zip(honest, docs, strict=True):
                if isinstance(d, BaseException):
                    problems.append(f"node {i}: {d}")
                    continue
                blocks, report = history.verify_served_chain(
                    d, cluster.consortium, cluster.registry
                )
                chains[i] = history.summarize(blocks)
                if isinstance(report, str):
                    problems.append(f"node {i}: {report}")
                elif not report.ok:
                    problems.append(f"node {i}: block {report.first_bad_height}: {report.reason}")
            heads = {(len(c), c[-1].block_hash if c else "") for c in chains.values()}
            if len(heads) <= 1 or attempt + 1 == CHAIN_FETCH_ATTEMPTS:
                break
            await asyncio.sleep(1.0)
        verify = history.make_result(
            "chains_verify",
            problems,
            f"{len(chains)} honest chains verify (links, roots, signatures, certificates)",
        )
        return chains, [verify]

    # ------------------------------------------------------------------ report

    def _finish(
        self,
        timeline: Timeline,
        load: Load,
        poller: Poller,
        recorder: Collector,
        chains: Mapping[int, list[BlockSummary]],
        verify_checks: list[CheckResult],
        settled: Mapping[str, Any],
        load_s: float,
        rate: float,
    ) -> dict[str, Any]:
        """Check the run, write its report and artifacts; returns the report."""
        records = sorted(load.records, key=lambda r: r.submit_s)
        for span in timeline.spans:
            if span.healed_s is not None:
                span.recovery_s = recovery_s(span.healed_s, records)
        run = RunRecords(
            records=records,
            chains=chains,
            verify_checks=verify_checks,
            samples=poller.samples,
            spans=timeline.spans,
            byzantine=timeline.byzantine,
            settled=settled,
            load_s=load_s,
            skipped=load.skipped,
            errors=load.errors,
            client_errors=load.client_errors,
        )
        load_info = {
            "rate_tx_s": round(rate, 1),
            "request_txs": load.batch,
            **(self.options.load_info or {}),
        }
        events = recorder.merged()
        faults = fault_timelines(
            timeline.spans,
            events,
            t0_wall_ms=self._t0_wall_ms,
            load_s=load_s,
            sources={i: st.to_json() for i, st in recorder.nodes.items()},
        )
        checks = run_checks(self.scenario, run)
        report = build_report(self.scenario, self.options.seed, run, checks, load_info, faults)
        write_report(self.options.out_dir, report, run, events)
        return report


def _copy_logs(layout: ClusterLayout, dest: Path) -> None:
    if not layout.logs_dir.is_dir():
        return
    dest.mkdir(parents=True, exist_ok=True)
    for log_file in layout.logs_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            shutil.copyfile(log_file, dest / log_file.name)
