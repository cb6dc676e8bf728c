"""What GET /status shows of a node: its counters, the consortium's keys, the document."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from node.config import NodeConfig
from node.transport import ReasonCounter

if TYPE_CHECKING:
    from node.runtime import Node


@dataclass(slots=True)
class NodeCounters:
    """What the consensus task and the inputs have done since start (mutable, task-owned)."""

    rounds: int = 0
    steps: int = 0
    persisted_msgs: int = 0
    committed_blocks: int = 0
    committed_txs: int = 0
    submitted_txs: int = 0
    refused_txs: int = 0
    served_fetches: int = 0
    served_blocks: int = 0
    peer_inbox_dropped: int = 0
    client_inbox_refused: int = 0
    view_changes: int = 0
    suspicions: int = 0
    """Times this replica's timer suspected the primary without (yet) f+1 agreeing."""
    dropped: ReasonCounter = field(default_factory=ReasonCounter)
    overloaded: ReasonCounter = field(default_factory=ReasonCounter)
    """Transactions answered 503 + Retry-After (admission control), by reason."""

    def to_json(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "steps": self.steps,
            "persisted_msgs": self.persisted_msgs,
            "committed_blocks": self.committed_blocks,
            "committed_txs": self.committed_txs,
            "submitted_txs": self.submitted_txs,
            "refused_txs": self.refused_txs,
            "served_fetches": self.served_fetches,
            "served_blocks": self.served_blocks,
            "peer_inbox_dropped": self.peer_inbox_dropped,
            "client_inbox_refused": self.client_inbox_refused,
            "view_changes": self.view_changes,
            "suspicions": self.suspicions,
            "core_dropped": self.dropped.snapshot(),
            "overloaded": self.overloaded.snapshot(),
        }


def consortium_json(cfg: NodeConfig) -> dict[str, object]:
    """Public keys this node verifies against (auditors should get them out of band)."""
    return {
        "cluster_id": cfg.cluster_id,
        "replicas": [
            {"id": r.id, "url": r.url, "public_key": r.public_key.hex()} for r in cfg.replicas
        ],
        "clients": [
            {"hospital": c.hospital, "public_key": c.public_key.hex()} for c in cfg.clients
        ],
    }


def status_document(node: Node, consortium: dict[str, object]) -> dict[str, object]:
    """The GET /status body of a started node."""
    r = node.replica
    height, head = node.store.head()
    return {
        "node": node.node_id,
        "view": r.view,
        "primary": r.primary,
        "is_primary": r.primary == node.node_id,
        "in_view_change": r.in_view_change,
        "height": height,
        "head_hash": head.hex(),
        "last_executed": r.last_executed,
        "stable_checkpoint": r.stable_seq,
        "mempool_size": r.mempool_size,
        "pending_txs": len(node.pending),
        "waiters": node.waiters.count,
        "inbox": node.inbox_status(),
        "healthy": node.healthy,
        "uptime_ms": node.clock() - node.started_ms,
        "n": node.config.n,
        "f": node.config.consensus.f,
        "peers": node.transport.peers_status(),
        **consortium,
        "counters": node.counters.to_json(),
        "gc": node.gc_pauses.to_json(),
        "transport": node.transport.status(),
        "faults": node.faults.status(),
    }
