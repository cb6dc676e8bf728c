"""Turning what a peer served into findings: problems in its state and signed evidence.

A served block that does not verify, or two validly certified blocks at one height, is
recorded as a signed evidence record a third party can check offline (``node.audit.evidence``);
records are deduplicated and kept (bounded) in the audit database (``node.audit.log``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from node.audit.compare import DIVERGED, INVALID, PeerState
from node.audit.evidence import (
    KIND_CONFLICT,
    KIND_INVALID,
    MAX_MALFORMED_EXHIBIT_CHARS,
    EvidenceError,
    Exhibit,
    Signer,
    block_exhibit_text,
    make_evidence,
)
from node.audit.log import AuditLog
from node.audit.served import ServedBlock, parse_block_json
from node.audit.verify_evidence import exhibit_problem
from node.ledger import Block, ClientRegistry, block_to_json

log = logging.getLogger("medchain.audit")


def malformed_exhibit(doc: object) -> str:
    """Exhibit text of a document that is not a well-formed block (bounded)."""
    try:
        text = block_exhibit_text(doc)
    except (TypeError, ValueError):
        text = repr(doc)
    return text[:MAX_MALFORMED_EXHIBIT_CHARS]


def exhibit_of(doc: object) -> str:
    """Exhibit text of a served document: whole if it is a well-formed block, else bounded."""
    try:
        parse_block_json(doc)
    except EvidenceError:
        return malformed_exhibit(doc)
    return block_exhibit_text(doc)


class Findings:
    """Records this node's findings about its peers (one per node, shared by every peer)."""

    def __init__(
        self,
        *,
        node_id: int,
        signer: Signer,
        audit_log: AuditLog,
        consortium: Sequence[bytes],
        registry: ClientRegistry,
    ) -> None:
        self.node_id = node_id
        self._signer = signer
        self._log = audit_log
        self._consortium = tuple(consortium)
        self._registry = registry

    def invalid_served(self, state: PeerState, height: int, problem: str, exhibit: str) -> None:
        state.problem(INVALID, height, problem)
        if self._evidential(exhibit, height) and self._record(
            kind=KIND_INVALID,
            height=height,
            accused=state.peer_id,
            source=state.url,
            reason=f"replica {state.peer_id} served block {height} that does not verify: {problem}",
            exhibits=[Exhibit(f"served by replica {state.peer_id}", exhibit)],
        ):
            state.counters.evidence_recorded += 1

    def diverged(self, state: PeerState, served: ServedBlock, ours: Block, doc: object) -> None:
        height = served.height
        if served.digest == ours.digest:
            # Same batch on a different history: the fork is lower down; that height's own
            # comparison carries the evidence.
            state.problem(
                DIVERGED,
                height,
                "same batch as ours on a different history (the chains diverge below this height)",
            )
            return
        state.problem(
            DIVERGED,
            height,
            f"validly certified block {served.block_hash.hex()[:16]} differs from "
            f"ours {ours.block_hash.hex()[:16]}",
        )
        if self._record(
            kind=KIND_CONFLICT,
            height=height,
            accused=state.peer_id,
            source=state.url,
            reason=f"two validly certified blocks at height {height}: replica "
            f"{state.peer_id} serves {served.block_hash.hex()}, replica {self.node_id} holds "
            f"{ours.block_hash.hex()}",
            exhibits=[
                Exhibit(f"served by replica {state.peer_id}", block_exhibit_text(doc)),
                Exhibit(f"held by replica {self.node_id}", block_exhibit_text(block_to_json(ours))),
            ],
        ):
            state.counters.evidence_recorded += 1

    def bad_copy(
        self,
        state: PeerState | None,
        peer_id: int,
        url: str,
        height: int,
        problem: str,
        doc: object | None,
    ) -> None:
        """A peer served a copy for repair that does not verify or does not fit our chain."""
        if state is not None:
            state.problem("bad-repair-copy", height, problem)
        if doc is None:
            return
        exhibit = exhibit_of(doc)
        if self._evidential(exhibit, height):
            self._record(
                kind=KIND_INVALID,
                height=height,
                accused=peer_id,
                source=url,
                reason=f"replica {peer_id} served block {height} for repair that does not "
                f"verify: {problem}",
                exhibits=[Exhibit(f"served by replica {peer_id}", exhibit)],
            )

    def _evidential(self, exhibit: str, height: int) -> bool:
        """Only a block that is invalid as exhibited (without payloads) makes evidence; a bad
        payload alone stays a logged problem, since evidence never carries payloads."""
        problem = exhibit_problem(exhibit, self._consortium, registry=self._registry, height=height)
        return problem is not None

    def _record(
        self,
        *,
        kind: str,
        height: int,
        accused: int,
        source: str,
        reason: str,
        exhibits: list[Exhibit],
    ) -> bool:
        try:
            record = make_evidence(
                self._signer,
                kind=kind,
                height=height,
                reporter=self.node_id,
                accused=accused,
                source=source,
                reason=reason,
                exhibits=exhibits,
            )
        except ValueError as e:
            log.error("cannot record evidence at height %d: %s", height, e)
            return False
        if not self._log.add_evidence(record):
            return False  # the same finding is already on record
        self._log.add_event("evidence", height, f"{kind} against replica {accused}: {reason}")
        log.warning("evidence recorded: %s", reason)
        return True
