"""One node's cross-audit of its peers' chains: rounds over every peer, and the report.

Every ``interval_ms`` (default 2 s), every peer is compared with our chain concurrently
(``node.audit.peer``); what a peer served that does not verify, or a validly certified block
that differs from ours, becomes a finding and, where it can be shown offline, signed evidence
(``node.audit.findings``). Our own blocks are read through the node's read path
(``node.reader.BlockReader``): a bad block of ours is quarantined and repaired there, never
blamed on a peer. Everything runs on the node's event loop thread; work per round is bounded by
:class:`~node.audit.settings.AuditSettings`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from node.access import ReaderHttp
from node.audit.client import PeerClient
from node.audit.compare import AGREE, SEVERITY, UNREACHABLE, PeerState
from node.audit.evidence import Signer
from node.audit.findings import Findings
from node.audit.log import AuditLog
from node.audit.peer import OurChain, PeerAudit
from node.audit.settings import AuditSettings
from node.periodic import PeriodicRounds
from node.reader import BlockReader
from node.repair import PeerError, now_ms, short

if TYPE_CHECKING:
    from node.config import NodeConfig

log = logging.getLogger("medchain.audit")


class Auditor:
    """One node's cross-audit. ``start()`` spawns the single background task, ``stop()``
    cancels it and closes the HTTP session, ``close()`` closes what it reads with."""

    def __init__(
        self,
        *,
        node_id: int,
        reader: BlockReader,
        signer: Signer,
        audit_log: AuditLog,
        settings: AuditSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """The peers are the reader's; ``rng`` picks the sampled heights (a parameter for
        tests). ``audit_log`` should be the reader's log too (one database)."""
        self.node_id = node_id
        self.reader = reader
        self.settings = s = settings or AuditSettings()
        self.audit_log = audit_log
        findings = Findings(
            node_id=node_id,
            signer=signer,
            audit_log=audit_log,
            consortium=reader.consortium,
            registry=reader.registry,
        )
        self._findings = findings
        self._ours = OurChain(reader)
        # Which heights are sampled only spreads the work: nothing depends on it being secret.
        self._peer = PeerAudit(self._ours, findings, s, rng or random.Random())
        self._states = {
            pid: PeerState(pid, url, s.max_problems) for pid, url in reader.peers.items()
        }
        reader.repairer.on_bad_copy = self._bad_copy
        self._rounds = PeriodicRounds(f"auditor-{node_id}", s.interval_ms, self.run_round)
        self._client: PeerClient | None = None
        self.rounds = 0
        self.last_round_ms: int | None = None

    @classmethod
    def for_node(
        cls,
        config: NodeConfig,
        reader: BlockReader,
        signer: Signer,
        audit_log: AuditLog,
        *,
        settings: AuditSettings | None = None,
    ) -> Auditor:
        """The auditor of a configured node, reading through its reader."""
        return cls(
            node_id=config.node_id,
            reader=reader,
            signer=signer,
            audit_log=audit_log,
            settings=settings,
        )

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, background: bool = True, http: ReaderHttp | None = None) -> None:
        """Open the HTTP session (``http``: TLS and read tokens to reach peers) and (unless
        ``background=False``, for tests driving :meth:`run_round` themselves) spawn the audit
        task."""
        session = self._rounds.open(http)
        self._client = PeerClient(
            session,
            timeout_ms=self.settings.http_timeout_ms,
            max_bytes=self.settings.max_response_bytes,
        )
        if background:
            self._rounds.spawn()

    async def stop(self) -> None:
        """Cancel the audit task and close the session. Idempotent."""
        await self._rounds.stop()
        self._client = None

    def close(self) -> None:
        self._ours.close()

    @property
    def round_errors(self) -> int:
        return self._rounds.round_errors

    # -- one round ---------------------------------------------------------------------------

    async def run_round(self) -> None:
        """Every peer, concurrently."""
        client = self._client
        if client is None:
            raise RuntimeError("auditor not started")
        self.rounds += 1
        await asyncio.gather(*(self._audit_peer(client, s) for s in self._states.values()))
        self.last_round_ms = now_ms()

    async def _audit_peer(self, client: PeerClient, state: PeerState) -> None:
        try:
            await self._peer.round(client, state)
        except PeerError as e:
            state.agreement = UNREACHABLE
            state.counters.unreachable += 1
            state.last_error = e.reason
        except Exception as e:
            # Whatever a peer sends, the audit of the others goes on; this is our bug.
            log.exception("audit of replica %d failed", state.peer_id)
            state.last_error = short(f"internal error: {type(e).__name__}: {e}")
        finally:
            state.counters.rounds += 1
            state.last_audit_ms = now_ms()

    def _bad_copy(
        self, peer_id: int, url: str, height: int, problem: str, doc: object | None
    ) -> None:
        self._findings.bad_copy(self._states.get(peer_id), peer_id, url, height, problem, doc)

    # -- reports -----------------------------------------------------------------------------

    agreement_states: tuple[str, ...] = tuple(sorted(SEVERITY, key=lambda a: SEVERITY[a]))
    """Every verdict the audit gives a peer, mildest first."""

    def peer_states(self) -> list[PeerState]:
        """Each peer's audit state (read-only: for the node's metrics)."""
        return list(self._states.values())

    def agreement(self) -> str:
        """The worst agreement over all peers (unknown before the first round)."""
        states = [s.agreement for s in self._states.values()]
        return max(states, key=lambda a: SEVERITY[a]) if states else AGREE

    def report(self) -> dict[str, Any]:
        height, head = self.reader.store.head()
        return {
            "node": self.node_id,
            "height": height,
            "head_hash": head.hex(),
            "agreement": self.agreement(),
            "interval_ms": self.settings.interval_ms,
            "rounds": self.rounds,
            "round_errors": self.round_errors,
            "last_round_ms": self.last_round_ms,
            "peers": [s.to_json() for s in self._states.values()],
            "local": self.reader.status(),
            "evidence": {
                "count": self.audit_log.evidence_count(),
                "by_kind": self.audit_log.evidence_by_kind(),
                "latest": self.audit_log.evidence_summaries(10),
            },
            "events": [e.to_json() for e in self.audit_log.events(20)],
            "event_counts": self.audit_log.event_counts(),
        }

    def evidence(self, limit: int = 50, before: int | None = None) -> list[dict[str, Any]]:
        return self.audit_log.evidence(limit, before_id=before)
