"""The fault timeline: each step fires at its time, its roles resolved against the view at that
moment; process faults go through the launcher, message faults through the nodes' signed
admin API; heal_all undoes everything."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from typing import Any, Final

from rich.console import Console

from scripts.cluster import ClusterError
from scripts.faultctl import AdminClient, AdminRequestError, wipe_node
from scripts.scenario.analyse import FaultSpan
from scripts.scenario.cluster import STARTUP_TIMEOUT_S, Cluster, RunError
from scripts.scenario.params import Step, resolve_all
from scripts.scenario.poller import Poller

STEP_GRACE_S: Final = 90.0
"""Longest wait at heal time for timeline steps still running (a restart in progress)."""


class Timeline:
    def __init__(
        self,
        cluster: Cluster,
        admin: AdminClient,
        poller: Poller,
        clock: Callable[[], float],
        out: Console,
    ) -> None:
        self._cluster = cluster
        self._admin = admin
        self._poller = poller
        self._clock = clock
        self._out = out
        self.spans: list[FaultSpan] = []
        self.byzantine: set[int] = set()
        self._tasks: list[asyncio.Task[None]] = []

    def schedule(self, steps: Sequence[Step]) -> None:
        for step in steps:
            self._tasks.append(asyncio.create_task(self._at(step), name=f"step-{step.label}"))

    async def _at(self, step: Step) -> None:
        await asyncio.sleep(max(0.0, step.at_s - self._clock()))
        span = FaultSpan(step.label, step.kind, [], round(self._clock(), 3), dict(step.params))
        self.spans.append(span)
        try:
            primary = await self._poller.primary()
            n = self._cluster.n
            span.nodes = resolve_all(step.nodes, primary, n)
            line = f"[{span.start_s:6.1f}s] {step.label} -> nodes {span.nodes}"
            self._out.print(line, markup=False)
            if step.is_process:
                await self._process_step(step, span)
            else:
                await self._layer_step(step, span, primary)
        except asyncio.CancelledError:
            raise
        except (RunError, ClusterError, AdminRequestError, OSError) as e:
            span.error = str(e)
            self._out.print(f"step {step.label} failed: {e}", style="red", markup=False)
        except Exception as e:  # a harness bug must still show up as a failed step
            span.error = f"{type(e).__name__}: {e}"
            self._out.print(
                f"step {step.label} failed unexpectedly: {span.error}", style="red", markup=False
            )

    async def _process_step(self, step: Step, span: FaultSpan) -> None:
        c = self._cluster
        first = True

        def started() -> None:
            # Launcher calls run one at a time: the fault starts when its turn comes, not
            # when the step fired (what the commit-gap analysis needs to know).
            nonlocal first
            if first:
                span.start_s = round(self._clock(), 3)
                first = False

        for i in span.nodes:
            if step.kind == "kill":
                c.down.add(i)
                await c.process(c.procs.kill, i, signal.SIGKILL, started=started)
            elif step.kind == "stop":
                c.suspended.add(i)
                await c.process(c.procs.kill, i, signal.SIGSTOP, started=started)
            elif step.kind == "wipe":
                c.down.add(i)
                await c.process(wipe_node, c.procs, i, start=False, started=started)
            else:  # restart: graceful stop, start, wait until it serves
                c.down.add(i)
                try:
                    await c.process(c.procs.restart, i, timeout=STARTUP_TIMEOUT_S, started=started)
                finally:
                    c.down.discard(i)
        if step.kind == "restart":
            span.healed_s = round(self._clock(), 3)
            return
        if step.duration_s is None and step.kind != "wipe":
            return  # healed at the end of the timeline
        await asyncio.sleep(step.duration_s or 0.0)
        for i in span.nodes:
            await self._revive(i)
        span.healed_s = round(self._clock(), 3)

    async def _revive(self, i: int) -> None:
        c = self._cluster
        if i in c.suspended:
            await c.process(c.procs.kill, i, signal.SIGCONT)
            c.suspended.discard(i)
        if i in c.down:
            await c.process(c.procs.start, i)
            await c.process(c.procs.wait_ready, [i], timeout=STARTUP_TIMEOUT_S)
            c.down.discard(i)

    async def _layer_step(self, step: Step, span: FaultSpan, primary: int) -> None:
        n = self._cluster.n
        fault: dict[str, Any] = {"kind": step.kind, **step.params}
        if step.groups:
            groups = [resolve_all(g, primary, n) for g in step.groups]
            fault["groups"] = groups
            span.params["groups"] = groups
        if step.duration_s is not None:
            fault["duration_s"] = step.duration_s
        if step.kind == "byzantine":
            self.byzantine.update(span.nodes)
            if len(self.byzantine) > self._cluster.f:
                raise RunError(
                    f"byzantine nodes {sorted(self.byzantine)} exceed f = {self._cluster.f}: "
                    "the scenario asks for more than PBFT tolerates"
                )
        targets = [i for i in span.nodes if i in self._cluster.reachable()]
        results = await asyncio.gather(
            *(self._admin.apply(i, self._cluster.urls[i], fault) for i in targets),
            return_exceptions=True,
        )
        errors = []
        for i, res in zip(targets, results, strict=True):
            if isinstance(res, BaseException):
                errors.append(str(res))
            else:
                span.fault_ids[i] = int(res["applied"]["id"])
        if errors:
            raise RunError("; ".join(errors))
        if step.duration_s is not None:
            await asyncio.sleep(step.duration_s)
            span.healed_s = round(self._clock(), 3)  # each node clears it on its own clock

    async def heal_all(self) -> None:
        """Let running steps finish (bounded), then revive every node and clear every fault."""
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _done, still = await asyncio.wait(pending, timeout=STEP_GRACE_S)
            for t in still:
                t.cancel()
        c = self._cluster
        for i in sorted(c.down | c.suspended):
            try:
                await self._revive(i)
            except (ClusterError, OSError) as e:
                self._out.print(f"heal: node {i} did not come back: {e}", style="red", markup=False)
        results = await asyncio.gather(
            *(self._admin.clear(i, c.urls[i]) for i in c.reachable()), return_exceptions=True
        )
        for i, res in zip(c.reachable(), results, strict=True):
            if isinstance(res, BaseException):
                self._out.print(
                    f"heal: clearing faults on node {i} failed: {res}", style="red", markup=False
                )
        now = round(self._clock(), 3)
        for span in self.spans:
            if span.healed_s is None and span.error is None:
                span.healed_s = now
