"""``GET /metrics``: one node's state as Prometheus metric families, built when scraped.

Every metric is read from what the node keeps anyway (its counters, the transport's link
stats, the replica's view, the observer's histograms) by one custom collector registered in a
``CollectorRegistry`` of the node's own, so several nodes in one process never share or clash
on a metric; nothing on the consensus hot path touches prometheus-client. Names follow the
Prometheus conventions: prefix ``medchain_``, base units (seconds, bytes) as suffixes,
counters end in ``_total``; labels are bounded (message kinds, the core's ``DropReason`` names,
peer ids, the bounded reason counters of the transport and API).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from consensus.events import DropReason
from node.observer import Buckets, Observer

if TYPE_CHECKING:
    from node.runtime import Node

PREFIX: Final = "medchain_"
_DROP_NAMES: Final = {r.value: r.name.lower() for r in DropReason}
"""Counter keys are the reasons' values (their log text); labels are their names."""


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(PREFIX + name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _labelled_counter(
    name: str, doc: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    fam = CounterMetricFamily(PREFIX + name, doc, labels=[label])
    for key, n in sorted(values.items()):
        fam.add_metric([key], n)
    return fam


def _histogram(name: str, doc: str, b: Buckets) -> HistogramMetricFamily:
    return HistogramMetricFamily(PREFIX + name, doc, buckets=b.cumulative(), sum_value=b.sum)


class NodeCollector(Collector):
    """Reads a started node at scrape time; yields nothing but ``medchain_up`` otherwise."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        node = self._node
        started = node.started
        yield _gauge("up", "1 while the consensus task runs", 1 if node.healthy else 0)
        info = InfoMetricFamily(PREFIX + "node", "This node's id and its consortium's size")
        info.add_metric(
            [],
            {"node": str(node.node_id), "n": str(node.config.n), "f": str(node.config.consensus.f)},
        )
        yield info
        yield _gauge(
            "start_time_seconds", "When the node started (Unix time)", node.started_ms / 1000.0
        )
        if not started:
            return
        yield from self._chain(node)
        yield from self._consensus(node, node.observer)
        yield from self._messages(node, node.observer)
        yield from self._peers(node)
        yield from self._latency(node.observer)
        yield from self._gc(node)
        yield from self._store(node)
        yield from self._events(node.observer)
        if node.auditor is not None:
            yield from self._audit(node)

    def _chain(self, node: Node) -> Iterator[Metric]:
        c = node.counters
        r = node.replica
        yield _counter(
            "committed_transactions", "Transactions committed to the chain", c.committed_txs
        )
        yield _counter("committed_blocks", "Blocks committed to the chain", c.committed_blocks)
        yield _gauge("height", "Height of the chain's last block", node.height)
        yield _gauge("last_executed_seq", "Last seq this replica executed", r.last_executed)
        yield _gauge("stable_checkpoint_seq", "Seq of the stable checkpoint", r.stable_seq)
        yield _gauge("mempool_transactions", "Transactions in the mempool", r.mempool_size)
        yield _gauge(
            "mempool_bytes", "Encoded bytes of the mempool's transactions", r.mempool.nbytes
        )
        yield _gauge(
            "pending_transactions", "Transactions known here, not yet committed", len(node.pending)
        )
        yield _counter(
            "transactions_accepted", "Client transactions acknowledged (202)", c.submitted_txs
        )
        refused = CounterMetricFamily(
            PREFIX + "transactions_refused",
            "Valid client transactions turned away, by reason",
            labels=["reason"],
        )
        refused.add_metric(["mempool_full"], c.refused_txs)
        refused.add_metric(["client_inbox_full"], c.client_inbox_refused)
        yield refused

    def _consensus(self, node: Node, obs: Observer) -> Iterator[Metric]:
        r = node.replica
        c = node.counters
        yield _gauge("view", "Current view", r.view)
        yield _gauge("primary", "Replica id of the current view's primary", r.primary)
        yield _gauge("in_view_change", "1 while a view change is under way", int(r.in_view_change))
        yield _counter(
            "view_changes", "View changes this replica started or joined", c.view_changes
        )
        yield _counter(
            "suspicions",
            "Times this replica suspected the primary while fewer than f+1 did",
            c.suspicions,
        )
        yield _counter("new_views", "Views installed after a view change", obs.new_views)
        yield _counter("view_timer_fires", "Times the view-change timer expired", obs.timer_fires)
        yield _gauge(
            "behind_seqs", "Seqs this replica is behind the peers it hears from", obs.lag(r)
        )
        yield _counter("rounds", "Rounds of the consensus task (step, then group commit)", c.rounds)
        yield _counter("steps", "Events stepped by the replica", c.steps)
        yield _counter("persisted_messages", "Consensus messages persisted", c.persisted_msgs)
        yield _counter("fetches_served", "State-transfer requests answered", c.served_fetches)
        yield _counter("blocks_served", "Blocks sent in state-transfer answers", c.served_blocks)
        drops = CounterMetricFamily(
            PREFIX + "consensus_drops",
            "Inputs the protocol core refused or ignored, by DropReason",
            labels=["reason"],
        )
        for key, n in sorted(c.dropped.snapshot().items()):
            drops.add_metric([_DROP_NAMES.get(key, key)], n)
        yield drops
        inbox = node.inbox_status()
        yield _gauge(
            "peer_inbox_messages", "Peer messages waiting for the consensus task", inbox["peer"]
        )
        yield _gauge("peer_inbox_bytes", "Bytes of the peer messages waiting", inbox["peer_bytes"])
        yield _gauge(
            "client_inbox_batches", "Client batches waiting for the consensus task", inbox["client"]
        )
        yield _gauge("waiters", "GET /tx long polls waiting", node.waiters.count)
        faults = node.faults
        yield _gauge(
            "faults_active",
            "Injected faults now active",
            len(faults.active()) if faults.enabled else 0,
        )
        yield _labelled_counter("faults", "Fault changes, by action", "action", obs.faults)

    def _messages(self, node: Node, obs: Observer) -> Iterator[Metric]:
        yield _labelled_counter(
            "messages_sent",
            "Consensus messages handed to the transport (per peer), by kind",
            "kind",
            obs.sent,
        )
        yield _labelled_counter(
            "messages_received",
            "Consensus messages stepped by the replica, by kind",
            "kind",
            obs.received,
        )
        t = node.transport
        yield _counter("peer_frames_received", "Frames decoded from peers", t.received_frames)
        yield _labelled_counter(
            "peer_frames_dropped",
            "Received frames dropped before the core, by reason",
            "reason",
            t.dropped_frames.snapshot(),
        )
        yield _labelled_counter(
            "peer_bodies_rejected",
            "POST /peer/msgs bodies refused whole, by reason",
            "reason",
            t.rejected.snapshot(),
        )
        yield _labelled_counter(
            "send_errors",
            "Outgoing messages not queued, by reason",
            "reason",
            t.send_encode_errors.snapshot(),
        )
        rej = CounterMetricFamily(
            PREFIX + "http_rejections",
            "HTTP requests answered with an error, by route, status and error",
            labels=["route", "code", "error"],
        )
        for key, n in sorted(obs.http_rejections.snapshot().items()):
            route, _, rest = key.partition("|")
            code, _, error = rest.partition("|")
            rej.add_metric([route, code, error], n)
        yield rej

    def _peers(self, node: Node) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "peer_up", "1 if the last POST to the peer succeeded", labels=["peer"]
        )
        rtt = GaugeMetricFamily(
            PREFIX + "peer_rtt_seconds", "Round trip of the last POST to the peer", labels=["peer"]
        )
        queued = GaugeMetricFamily(
            PREFIX + "peer_queued_frames", "Frames queued for the peer", labels=["peer"]
        )
        frames = CounterMetricFamily(
            PREFIX + "peer_sent_frames", "Frames delivered to the peer", labels=["peer"]
        )
        sent_b = CounterMetricFamily(
            PREFIX + "peer_sent_bytes", "Body bytes delivered to the peer", labels=["peer"]
        )
        fails = CounterMetricFamily(
            PREFIX + "peer_send_failures", "Failed POSTs to the peer", labels=["peer"]
        )
        lost = CounterMetricFamily(
            PREFIX + "peer_dropped_frames",
            "Outgoing frames dropped, by reason",
            labels=["peer", "reason"],
        )
        heard = GaugeMetricFamily(
            PREFIX + "peer_heard_age_seconds",
            "Time since the replica last heard from the peer",
            labels=["peer"],
        )
        seq = GaugeMetricFamily(
            PREFIX + "peer_seq", "Highest seq the peer's messages named", labels=["peer"]
        )
        r = node.replica
        now = node.clock()
        for pid in node.transport.peer_ids:
            s = node.transport.link(pid).stats
            p = [str(pid)]
            up.add_metric(p, 1 if s.state == "up" else 0)
            if s.rtt_s is not None:
                rtt.add_metric(p, s.rtt_s)
            queued.add_metric(p, node.transport.link(pid).queued)
            frames.add_metric(p, s.sent_frames)
            sent_b.add_metric(p, s.sent_bytes)
            fails.add_metric(p, s.send_errors)
            lost.add_metric([*p, "queue_full"], s.dropped_queue_full)
            lost.add_metric([*p, "rejected"], s.dropped_rejected)
            last = r.heard_ms.get(pid)
            if last is not None:
                heard.add_metric(p, max(0, now - last) / 1000.0)
            if pid in node.observer.peer_seq:
                seq.add_metric(p, node.observer.peer_seq[pid])
        yield from (up, rtt, queued, frames, sent_b, fails, lost, heard, seq)

    def _latency(self, obs: Observer) -> Iterator[Metric]:
        yield _histogram(
            "commit_latency_seconds",
            "From a transaction's acknowledgement (202) here to its block's commit here",
            obs.commit_latency,
        )
        yield _histogram(
            "consensus_round_duration_seconds",
            "From a seq's pre-prepare (received or sent) to its execution here",
            obs.consensus_round,
        )
        yield _histogram(
            "task_round_duration_seconds",
            "One pass of the consensus task: step the round's events, persist, send",
            obs.task_round,
        )
        yield _histogram(
            "store_write_duration_seconds",
            "One SQLite write transaction, BEGIN to COMMIT",
            obs.store_write,
        )
        yield _histogram(
            "store_commit_duration_seconds",
            "The COMMIT of a write transaction (the WAL write; the fsync when synchronous=FULL)",
            obs.store_commit,
        )

    def _gc(self, node: Node) -> Iterator[Metric]:
        pauses = node.gc_pauses
        family = HistogramMetricFamily(
            PREFIX + "gc_pause_seconds",
            "Pauses of the node process by garbage collection, by generation",
            labels=["generation"],
        )
        for gen, b in enumerate(pauses.by_generation):
            family.add_metric([str(gen)], b.cumulative(), sum_value=b.sum)
        yield family
        yield _counter(
            "gc_long_pauses",
            "Garbage collections that paused the node 100 ms or more",
            pauses.long_pauses,
        )

    def _store(self, node: Node) -> Iterator[Metric]:
        path = node.store.path
        size = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):  # no WAL file between checkpoints
                size += os.stat(f"{path}{suffix}").st_size
        yield _gauge("store_size_bytes", "Size of the SQLite store and its WAL", size)

    def _events(self, obs: Observer) -> Iterator[Metric]:
        ring = obs.ring
        yield _counter(
            "events_recorded", "Protocol events recorded in the flight recorder", ring.recorded
        )
        yield _counter(
            "events_evicted", "Protocol events evicted from the ring (oldest first)", ring.evicted
        )
        yield _gauge("events_ring_events", "Events held in the ring", len(ring))
        yield _gauge("events_ring_bytes", "Estimated bytes of the events held", ring.nbytes)

    def _audit(self, node: Node) -> Iterator[Metric]:
        auditor = node.auditor
        assert auditor is not None
        state = GaugeMetricFamily(
            PREFIX + "audit_peer_agreement",
            "1 for the audit's current verdict on the peer's chain, 0 for the others",
            labels=["peer", "agreement"],
        )
        lag = GaugeMetricFamily(
            PREFIX + "audit_peer_lag_blocks", "Blocks the peer is behind us", labels=["peer"]
        )
        checked = CounterMetricFamily(
            PREFIX + "audit_peer_blocks_compared", "Heights compared with the peer", labels=["peer"]
        )
        bad = CounterMetricFamily(
            PREFIX + "audit_peer_bad_blocks",
            "Peer blocks found invalid or divergent",
            labels=["peer", "outcome"],
        )
        for s in auditor.peer_states():
            p = str(s.peer_id)
            for a in auditor.agreement_states:
                state.add_metric([p, a], 1 if s.agreement == a else 0)
            if s.lag is not None:
                lag.add_metric([p], s.lag)
            checked.add_metric([p], s.counters.blocks_compared)
            bad.add_metric([p, "invalid"], s.counters.invalid_blocks)
            bad.add_metric([p, "diverged"], s.counters.divergent_blocks)
        yield from (state, lag, checked, bad)
        yield _counter("audit_rounds", "Audit rounds over every peer", auditor.rounds)
        yield _counter("audit_round_errors", "Audit rounds that failed", auditor.round_errors)


def node_registry(node: Node) -> CollectorRegistry:
    """A registry of this node's own: its collector and the process's CPU, memory and fds."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    ProcessCollector(registry=registry)
    return registry
